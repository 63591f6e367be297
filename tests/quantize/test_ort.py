"""ONNX Runtime int8 and the measured backend choice: close to fp32, exact reloads, decisions recorded."""
import copy

import numpy as np
import pytest
import torch

import condense
from condense.core.config import config_from_dict
from condense.core.lineage import lineage
from condense.errors import CondenseError, ConfigError
from condense.export import OrtSentenceEncoder
from condense.quantize.backends import Int8Config, pick
from condense.quantize.bf16 import native_bf16
from condense.quantize.onednn import onednn_int8
from condense.quantize.ort import OrtInt8Config

TEXTS = ["Return the number of items in a container.", "Open a file and return a stream.",
         "Raise OSError upon failure.", "A man is eating food.", "The quick brown fox jumps over the lazy dog.",
         "Convert a string to an integer, honouring the given base.", "short"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def minilm(one_thread):
    task = condense.get_task("minilm", n_pairs=20)
    model = task.build_model()
    return task, model, model.encode(TEXTS)


@pytest.fixture(scope="module")
def int8(minilm):
    task, model, _ = minilm
    return condense.quantize_(copy.deepcopy(model), OrtInt8Config(float_channels=4, calibration_batches=2),
                              task=task)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_ort_int8_stays_close_to_fp32(minilm, int8):
    _, _, ref = minilm
    assert isinstance(int8, OrtSentenceEncoder)
    assert _cosines(int8.encode(TEXTS), ref).min() >= 0.98
    d = lineage(int8)["transforms"][-1]["details"]
    assert "MatMulInteger" in d["int8_ops"] and d["float_nodes"] == []
    assert len(d["excluded_nodes"]) == 12  # the 6 blocks' float side paths (in and out), nothing else
    assert d["onnx_bytes"] < 30e6  # int8 weights: ~4x smaller than the 90 MB fp32 graph


@pytest.mark.slow
def test_float_outlier_channels_beat_plain_int8(minilm, int8):
    task, model, ref = minilm
    plain = condense.quantize_(copy.deepcopy(model), OrtInt8Config(), task=task)
    assert _cosines(int8.encode(TEXTS), ref).mean() > _cosines(plain.encode(TEXTS), ref).mean()


@pytest.mark.slow
def test_ort_int8_saves_and_loads_identically(int8, tmp_path):
    from condense.export.runtime import disabled_optimizers

    loaded = condense.load(condense.save(int8, tmp_path / "int8"))
    assert np.array_equal(loaded.encode(TEXTS), int8.encode(TEXTS))
    d = lineage(int8)["transforms"][-1]["details"]  # the measured session choice is kept with the graph
    assert set(d["session_timings_ms"]) == {"defaults", "without SkipLayerNormFusion"}
    assert list(disabled_optimizers(loaded.graph.onnx_model)) == d["disabled_optimizers"]


@pytest.mark.slow
def test_excluding_a_fused_projection_is_refused(minilm):
    task, model, _ = minilm
    with pytest.raises(ConfigError, match="optimize=False"):
        condense.quantize_(copy.deepcopy(model), OrtInt8Config(optimize=True, exclude=("bert.layers.0.attn.query",)),
                           task=task)


def test_configs_round_trip_and_validate():
    for cfg in (OrtInt8Config(op_types=("MatMul",), exclude=("x",)), Int8Config(backend="ort-fused", tolerance=0.02)):
        assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="op_types"):
        OrtInt8Config(op_types=("Softmax",))
    with pytest.raises(ConfigError, match="backend must be one of"):
        Int8Config(backend="tensorrt")


def test_auto_backend_records_a_measured_choice(tmp_path):
    task = condense.get_task("condense.testing:tiny_task")
    model = task.build_model()
    q = condense.quantize_(model, Int8Config(min_time_s=0.3, tolerance=0.05), task=task)
    d = lineage(q)["transforms"][-1]["details"]
    rows = {r["backend"]: r for r in d["candidates"]}
    native = native_bf16()[0]  # the bf16 candidate is built only where the CPU has native bf16, else recorded
    int8_native, int8_why = onednn_int8()  # likewise the oneDNN candidate, where int8 dot products are native
    assert set(rows) == ({"fp32", "torch", "torch-static", "ort", "ort-fused"} | ({"bf16"} if native else set())
                         | ({"onednn"} if int8_native else set()))
    assert d["skipped"] == ({} if native else {"bf16": native_bf16()[1]}) | ({} if int8_native
                                                                            else {"onednn": int8_why})
    assert "BERT" in rows["ort-fused"]["error"] and rows["ort-fused"]["p50_ms"] is None
    # evaluated fastest first until one keeps the metric: faster ones were evaluated and missed it, slower ones
    # were not evaluated (they could not win) and say so
    picked, base = rows[d["backend"]], rows["fp32"]["metric"]
    built = [r for r in rows.values() if r["backend"] != "fp32" and r["error"] is None]
    assert task.within_budget(picked["metric"], base, 0.05) and d["backend"] in d["reason"]
    for r in built:
        assert r["p50_ms"] > 0 and r["build_s"] >= 0
        if r["p50_ms"] < picked["p50_ms"]:
            assert r["metric"] is not None and not task.within_budget(r["metric"], base, 0.05)
        elif r is not picked:
            assert r["metric"] is None and r["eval_s"] is None and r["note"].startswith("not evaluated")
    slower = sum(1 for r in built if r["p50_ms"] > picked["p50_ms"])  # the reason counts them, or says nothing
    assert (f"; {slower} slower candidate(s) not evaluated" in d["reason"]) if slower else \
        "not evaluated" not in d["reason"]
    x = task.batch(8)
    loaded = condense.load(condense.save(q, tmp_path / "auto"))
    assert torch.equal(torch.as_tensor(loaded(x)), torch.as_tensor(q(x)))


class _Twice(torch.nn.Module):
    """The model run twice per call: the same outputs, reliably slower."""

    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.m(x)
        return self.m(x)


@pytest.mark.parametrize("evaluate_all", [False, True])
def test_measure_candidates_evaluates_fastest_first_and_stops_at_the_first_good_one(evaluate_all):
    from condense.quantize.backends import measure_candidates

    task = condense.get_task("condense.testing:tiny_task")
    evaluated = []

    def good(v: float, base: float) -> bool:
        evaluated.append(v)
        return v == base

    rows, built = measure_candidates(task.build_model(), {"slow": _Twice, "fast": lambda m: m}, task, batch_size=8,
                                     min_time_s=0.05, good=None if evaluate_all else good)
    rows = {r["backend"]: r for r in rows}
    assert set(built) == {"slow", "fast"} and rows["slow"]["p50_ms"] > rows["fast"]["p50_ms"]
    assert rows["fast"]["metric"] == rows["fp32"]["metric"] == 1.0
    if evaluate_all:
        assert rows["slow"]["metric"] == 1.0 and rows["slow"]["note"] is None and evaluated == []
    else:  # "fast" kept the metric, so "slow" could not win: not evaluated, and its row says why
        assert rows["slow"]["metric"] is None and rows["slow"]["note"].startswith("not evaluated: slower than fast")
        assert evaluated == [1.0]


def test_pick_keeps_quality_first():
    rows = [{"backend": "fp32", "p50_ms": 10.0, "metric": 0.90, "error": None},
            {"backend": "fast", "p50_ms": 1.0, "metric": 0.80, "error": None},
            {"backend": "good", "p50_ms": 4.0, "metric": 0.895, "error": None},
            {"backend": "broken", "p50_ms": None, "metric": None, "error": "no kernel"}]
    within = condense.get_task("condense.testing:tiny_task").within_budget
    assert pick(rows, baseline=0.90, tolerance=0.01, within=within)[0] == "good"
    with pytest.raises(CondenseError, match="no int8 backend kept the metric"):
        pick(rows, baseline=0.95, tolerance=0.01, within=within)
    with pytest.raises(ConfigError, match="pass task="):
        condense.quantize_(torch.nn.Linear(2, 2), Int8Config())


class _AddNorm(torch.nn.Module):
    """LayerNorm(x + y): the pattern ONNX Runtime fuses into SkipLayerNormalization."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.norm(x + y)


def _ops_as_run(data: bytes, tmp_path, name: str) -> set[str]:
    import onnx

    from condense.export.runtime import make_session

    path = str(tmp_path / f"{name}.onnx")
    make_session(data, 1, optimized_model_path=path)
    return {n.op_type for n in onnx.load(path).graph.node}


def test_disabled_optimizers_travel_in_the_graph_metadata(tmp_path):
    import io

    from condense.export.runtime import OrtModule, disabled_optimizers, with_disabled_optimizers

    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    buf = io.BytesIO()
    torch.onnx.export(_AddNorm().eval(), (x, y), buf, dynamo=False, opset_version=17)
    data = buf.getvalue()
    tuned = with_disabled_optimizers(data, ("SkipLayerNormFusion",))
    assert disabled_optimizers(data) == () and disabled_optimizers(tuned) == ("SkipLayerNormFusion",)
    assert disabled_optimizers(with_disabled_optimizers(tuned, ())) == ()
    assert "SkipLayerNormalization" in _ops_as_run(data, tmp_path, "default")
    ops = _ops_as_run(tuned, tmp_path, "tuned")
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
    torch.testing.assert_close(OrtModule(tuned)(x, y), OrtModule(data)(x, y), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("gain, kept", [(0.01, ()), (0.10, ("SkipLayerNormFusion",))])
def test_session_tuning_keeps_ort_defaults_unless_clearly_faster(monkeypatch, gain, kept):
    import condense.measurement.timing as timing
    from condense.quantize import ort

    class FakeSession:
        def __init__(self, disabled: tuple[str, ...]) -> None:
            self.disabled = disabled

        def get_inputs(self) -> list:
            return []

        def run(self, *args):
            return None

    class Stats:
        def __init__(self, p50: float) -> None:
            self.p50 = p50

    calls = []

    def fake_time_call(fn, **kw):  # defaults 10 ms, the variant `gain` faster
        calls.append(fn)
        session = fn.__defaults__[0]
        return Stats(0.010 * (1 - gain) if session.disabled else 0.010)

    monkeypatch.setattr(timing, "time_call", fake_time_call)
    monkeypatch.setattr("condense.export.runtime.make_session", lambda data, threads, disabled: FakeSession(disabled))
    best, ms = ort.fastest_session(b"graph", (), rounds=3)
    assert best == kept and len(calls) == 3 * len(ort.SESSION_VARIANTS)
    assert ms == {"defaults": 10.0, "without SkipLayerNormFusion": round(10.0 * (1 - gain), 3)}


def test_auto_backend_skips_a_candidate_that_fails_and_says_why(monkeypatch):
    """A backend that raises (any exception, at build or when it runs the task's batch) is skipped with a warning
    and its error in the candidates; the others are still measured and one is picked."""
    from condense.quantize import backends

    real = backends.backend_config

    def flaky(backend, cfg, model):
        if backend is backends.Backend.ORT:
            raise RuntimeError("ort cannot take this model\nsecond line")
        return real(backend, cfg, model)

    def refuses_batches(m):
        raise TypeError("forward() got an unexpected keyword argument 'input_ids'")

    monkeypatch.setattr(backends, "backend_config", flaky)
    real_apply = backends._apply

    def apply_then_break(backend, cfg, model, ctx):
        out, entry = real_apply(backend, cfg, model, ctx)
        if backend is backends.Backend.TORCH_STATIC:
            out.forward = refuses_batches  # builds, then fails on the task's own batch
        return out, entry

    monkeypatch.setattr(backends, "_apply", apply_then_break)
    task = condense.get_task("condense.testing:tiny_task")
    with pytest.warns(UserWarning, match="backend 'ort' skipped: RuntimeError: ort cannot take this model"):
        q = condense.quantize_(task.build_model(), Int8Config(min_time_s=0.2, tolerance=0.05, bf16=False),
                               task=task)
    d = lineage(q)["transforms"][-1]["details"]
    rows = {r["backend"]: r for r in d["candidates"]}
    assert d["skipped"] == {"bf16": "Int8Config(bf16=False)"} and "bf16" not in rows
    assert rows["ort"]["error"] == "RuntimeError: ort cannot take this model" and rows["ort"]["p50_ms"] is None
    assert rows["torch-static"]["error"].startswith("TypeError: forward() got an unexpected keyword")
    assert d["backend"] == "torch" and rows["torch"]["error"] is None and rows["torch"]["p50_ms"] > 0
