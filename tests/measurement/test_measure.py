import json

import pytest

import condense
from condense.errors import ConfigError, CondenseError
from condense.measurement.api import MeasureConfig, Measurement
from condense.measurement.timing import time_call
from condense.tasks import get_task


def test_time_call_runs_at_least_repeats_and_orders_percentiles():
    calls = []
    s = time_call(lambda: calls.append(1), warmup=2, repeats=7)
    assert len(calls) == 9 and s.n == 7
    assert s.min <= s.p50 <= s.p95


def test_time_call_measures_a_known_sleep():
    # In a fresh process: cpu_cores_busy counts every thread of the process, and threads earlier tests left in
    # this one (ONNX Runtime and torch pools) may wake while the sleep is timed.
    import subprocess
    import sys

    code = ("import json, time; from condense.measurement.timing import time_call; "
            "print(json.dumps(time_call(lambda: time.sleep(0.01), warmup=0, repeats=3).to_dict()))")
    s = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                  timeout=120).stdout)
    assert 0.009 <= s["p50_s"] < 0.2  # sleep(10 ms) can overrun but never underrun
    assert s["cpu_cores_busy"] < 0.5  # sleeping uses no CPU


def test_peak_memory_sees_a_large_allocation():
    # In a fresh process: one that already holds freed heap pages (as after earlier tests) reuses them, and then
    # no new resident memory appears, which is the right answer for that process but not what this test checks.
    import subprocess
    import sys

    code = ("import json, torch\n"
            "from condense.measurement.memory import peak_memory\n"
            "def alloc():\n"
            "    t = torch.ones(64 * 2**20 // 4)\n"
            "    return float(t.sum())\n"
            "print(json.dumps(peak_memory(alloc)))\n")
    r = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    if r["peak_bytes"] is None:
        pytest.skip("peak memory not measurable on this platform")
    assert r["increase_bytes"] >= 60 * 2**20  # a 64 MiB tensor, written: at least 60 MiB more resident
    assert r["peak_bytes"] >= r["increase_bytes"]


def test_peak_memory_does_not_count_freed_heap():
    # 320 MiB of 16 KiB heap blocks, every 64th kept alive so the freed ones cannot shrink the heap from its top:
    # without handing the freed pages back, they stay resident and a call that allocates nothing would be
    # charged for them (as a model measured right after its training was charged for the training's heap).
    import subprocess
    import sys

    code = ("import json\n"
            "from condense.measurement.memory import _read_status_kb, peak_memory, release_freed_memory\n"
            "blocks = [bytearray(16384) for _ in range(20480)]\n"
            "keep = blocks[::64]\n"
            "del blocks\n"
            "held = _read_status_kb('VmRSS')\n"
            "r = peak_memory(lambda: None)\n"
            "print(json.dumps({**r, 'held_kb': held, 'trim': release_freed_memory()}))\n")
    r = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    if r["peak_bytes"] is None or not r["trim"]:
        pytest.skip("peak memory or malloc_trim not available on this platform")
    assert r["held_kb"] * 1024 - r["peak_bytes"] >= 250 * 2**20  # most of the 315 MiB freed is not counted
    assert r["method"].endswith("freed heap trimmed)")


def test_measure_tiny_task_records_everything():
    task = get_task("condense.testing:tiny_task")
    m = condense.measure(task.build_model(), task, MeasureConfig(batch_sizes=(1, 4), repeats=3, min_time_s=0,
                                                                 threads=1))
    assert m.params_total == 8 * 16 + 16 + 16 * 4 + 4
    assert m.macs_per_sample == 8 * 16 + 16 * 4
    assert set(m.latency) == {"1", "4"} and m.quality == {"agreement": 1.0}
    assert m.throughput["4"] == pytest.approx(4 / m.latency["4"]["p50_s"])
    assert m.machine["torch_threads"] == 1 and "torch" in m.machine["versions"]
    assert m.size_bytes > m.params_total * 4
    again = Measurement.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m


def test_measure_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        MeasureConfig(threads=0)
    with pytest.raises(CondenseError, match="batch size must be a positive integer"):
        MeasureConfig(batch_sizes=(0,))
    with pytest.raises(ConfigError, match="unknown device"):
        MeasureConfig(device="tpu9")


def test_digits_task_quality_is_high():
    task = get_task("digits")
    acc = task.metrics(task.build_model())["accuracy"]
    assert acc > 0.9
