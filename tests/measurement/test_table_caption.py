from condense.measurement.api import Measurement
from condense.measurement.table import comparison_table


def _row(machine):
    return Measurement(label="fp32", task="t", primary_metric="acc", higher_is_better=True, params_total=10,
                       params_nonzero=10, machine=machine)


def test_caption_names_the_cpu_and_threads_on_cpu():
    t = comparison_table([_row({"device": "cpu", "torch_threads": 2, "cpu": "AMD EPYC"})])
    assert t.caption == "medians; 2 torch threads; AMD EPYC; * primary metric"


def test_caption_names_the_gpu_when_measured_on_one():
    t = comparison_table([_row({"device": "cuda:0", "torch_threads": 16, "cpu": "Xeon", "gpu": "NVIDIA H200"})])
    assert t.caption == "medians; NVIDIA H200 (cuda:0); * primary metric"
