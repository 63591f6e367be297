import pytest
import torch

from condense.core.devices import check_device
from condense.errors import ConfigError


@pytest.mark.parametrize("spec", ["cpu", "cpu:0"])
def test_cpu_names_are_accepted(spec):
    assert check_device(spec) == spec


@pytest.mark.parametrize("spec, message", [
    ("cpu:1", "there is one CPU device; use 'cpu'"),
    ("CPU", "unknown device 'CPU'"),
    ("gpu", "unknown device 'gpu'"),
    ("cpu:-1", "unknown device 'cpu:-1'"),
    ("meta", "device 'meta' is not supported; use 'cpu' or 'cuda'"),
    ("mps", "device 'mps' is not supported"),
])
def test_other_names_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        check_device(spec)


def test_cuda_index_is_checked_against_the_gpus_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU is available; use --device cpu"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda") == "cuda" and check_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match=r"this machine has 2 CUDA GPUs \(cuda:0..cuda:1\)"):
        check_device("cuda:2")
