"""Client data splits: deterministic, covering every sample once, label skew growing as alpha shrinks."""
import pytest
import torch

from condense.errors import ConfigError
from condense.federated.splits import dirichlet_split, iid_split, label_skew

LABELS = torch.arange(1000) % 10  # 10 balanced classes


def _covers_once(parts, n):
    return sorted(torch.cat(parts).tolist()) == list(range(n))


def test_dirichlet_is_deterministic_and_covers_every_sample_once():
    a = dirichlet_split(LABELS, 20, alpha=0.5, seed=3)
    b = dirichlet_split(LABELS, 20, alpha=0.5, seed=3)
    c = dirichlet_split(LABELS, 20, alpha=0.5, seed=4)
    assert len(a) == 20 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))
    assert _covers_once(a, 1000) and _covers_once(c, 1000)
    assert all(p.numel() >= 1 for p in a)


def test_dirichlet_label_skew_grows_as_alpha_shrinks():
    skew = {alpha: label_skew(LABELS, dirichlet_split(LABELS, 20, alpha=alpha, seed=0))
            for alpha in (100.0, 1.0, 0.1)}
    assert skew[100.0] < skew[1.0] < skew[0.1]
    assert skew[100.0] < 0.2 < 0.6 < skew[0.1]


def test_dirichlet_leaves_no_client_empty_even_when_very_skewed():
    parts = dirichlet_split(LABELS[:60], 30, alpha=0.01, seed=0)
    assert all(p.numel() >= 1 for p in parts) and _covers_once(parts, 60)


def test_iid_split_covers_once_with_near_equal_sizes():
    parts = iid_split(1001, 20, seed=0)
    sizes = [p.numel() for p in parts]
    assert _covers_once(parts, 1001) and max(sizes) - min(sizes) == 1
    assert label_skew(LABELS, iid_split(1000, 5, seed=0)) < 0.1


@pytest.mark.parametrize("kwargs", [dict(alpha=0.0), dict(alpha=-1.0), dict(alpha=0.5, clients=0),
                                    dict(alpha=0.5, clients=1001)])
def test_bad_split_arguments_raise_config_errors(kwargs):
    clients = kwargs.pop("clients", 4)
    with pytest.raises(ConfigError):
        dirichlet_split(LABELS, clients, **kwargs)


def test_import_condense_and_the_federated_names_do_not_import_flwr():
    import subprocess
    import sys

    code = ("import sys, condense; print('flwr' in sys.modules); condense.FederatedConfig; condense.federated; "
            "print('flwr' in sys.modules, callable(condense.federated)); "
            "from condense.cli import build_parser; build_parser(); print('flwr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "True", "False"]  # the CLI parser builds after the lazy name resolved


def test_group_split_gives_each_client_one_group_and_checks_the_count():
    from types import SimpleNamespace

    from condense.federated.splits import group_split

    task = SimpleNamespace(name="t", extras={"client_groups": LABELS % 3})
    parts = group_split(task, 1000, 3)
    assert [p.numel() for p in parts] == [400, 300, 300] and _covers_once(parts, 1000)
    assert all(bool((LABELS[p] % 3 == k).all()) for k, p in enumerate(parts))
    with pytest.raises(ConfigError, match="set clients=3"):
        group_split(task, 1000, 4)
    with pytest.raises(ConfigError, match="no client groups"):
        group_split(SimpleNamespace(name="t", extras={}), 1000, 3)
