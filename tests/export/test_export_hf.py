"""Hugging Face models (keyword inputs, ModelOutput returns) through ONNX export, ONNX Runtime and int8.

Tiny configs built offline. Bounds: fp32 ONNX Runtime vs torch within 1e-4 (float32 reordering only); ORT dynamic
int8 within 0.1 abs on the tiny BERT's last hidden state (LayerNorm-scaled, |values| ~ 1-4), with cosine > 0.99.
"""
import copy
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import condense  # noqa: E402
from condense.core.lineage import lineage  # noqa: E402
from condense.core.task import Task  # noqa: E402
from condense.core.transforms import apply_  # noqa: E402
from condense.export import OnnxRuntimeConfig, OrtModule, export_onnx  # noqa: E402
from condense.quantize.backends import Int8Config  # noqa: E402
from condense.quantize.ort import OrtInt8Config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(b: int, t: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(b * 100 + t)
    ids = torch.randint(0, 256, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, -2:] = 0  # padding in the first row
    return {"input_ids": ids, "attention_mask": mask}


def _task(model: torch.nn.Module, key: str) -> Task:
    ref = model(**_batch(4, 8))[key].detach()

    def evaluate(m: torch.nn.Module) -> dict[str, float]:  # the user's own evaluate: keywords in, `.<key>` out
        got = m(**_batch(4, 8))[key]
        return {"agreement": float(torch.nn.functional.cosine_similarity(got.flatten(1), ref.flatten(1)).mean())}

    return Task("hf-tiny", model, inputs=_batch, evaluate=evaluate, primary_metric="agreement", batch_sizes=(2,))


def _bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  vocab_size=256, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=256)
    return transformers.LlamaForCausalLM(cfg).eval()


def _gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=256,
                                                                n_positions=64)).eval()


@pytest.fixture(scope="module")
def bert_ort(one_thread):
    model = _bert()
    task = _task(model, "last_hidden_state")
    return model, task, apply_(copy.deepcopy(model), OnnxRuntimeConfig(), task=task)


def test_bert_dict_batch_runs_in_onnx_runtime_with_the_same_keywords(bert_ort):
    model, task, ort = bert_ort
    assert isinstance(ort, OrtModule)
    d = lineage(ort)["transforms"][-1]["details"]
    assert d["inputs"] == ["input_ids", "attention_mask"] and d["outputs"][0] == "last_hidden_state"
    assert d["exporter"] == "legacy"
    for b, t in ((2, 8), (3, 11)):  # another batch size and sequence length: both axes are dynamic
        batch = _batch(b, t)
        with torch.no_grad():
            ref = model(**batch)
        got = ort(**batch)  # keywords, as the original takes them
        assert type(got) is type(ref)  # the same ModelOutput class: the user's `.last_hidden_state` keeps working
        assert (got.last_hidden_state - ref.last_hidden_state).abs().max() < 1e-4
        pos = ort(batch["input_ids"], batch["attention_mask"])  # positional, in the original's order
        assert torch.equal(pos.last_hidden_state, got.last_hidden_state)
        assert torch.equal(ort(**batch, output_attentions=None, use_cache=False)[0], got[0])  # switches ignored
    assert task.metrics(ort)["agreement"] > 0.9999


def test_ort_module_names_a_wrong_keyword(bert_ort):
    _, _, ort = bert_ort
    with pytest.raises(condense.CondenseError, match=r"takes inputs \['input_ids', 'attention_mask'\]"):
        ort(input_ids=_batch(2)["input_ids"], token_type_ids=torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(condense.CondenseError, match="missing"):
        ort(input_ids=_batch(2)["input_ids"])


def test_bert_ort_int8_stays_within_bound(bert_ort):
    model, task, _ = bert_ort
    q = apply_(copy.deepcopy(model), OrtInt8Config(tune_session=False), task=task)
    d = lineage(q)["transforms"][-1]["details"]
    assert "MatMulInteger" in d["int8_ops"] or "DynamicQuantizeMatMul" in d["int8_ops"], d["int8_ops"]
    batch = _batch(3, 8)
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
    got = q(**batch).last_hidden_state
    assert (got - ref).abs().max() < 0.1  # measured 0.026
    assert torch.nn.functional.cosine_similarity(got.flatten(1), ref.flatten(1)).min() > 0.99


def test_saved_ort_model_reloads_with_equal_outputs(bert_ort, tmp_path):
    _, _, ort = bert_ort
    loaded = condense.load(condense.save(ort, tmp_path / "ort"), model=_bert())
    batch = _batch(2, 9)
    assert torch.equal(loaded(**batch).last_hidden_state, ort(**batch).last_hidden_state)


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_decoders_export_and_logits_match(build, tmp_path):
    model = build()
    task = _task(model, "logits")
    r = export_onnx(model, task, tmp_path / "m.onnx")  # no DynamicCache leaks into the trace (use_cache=False)
    assert r["inputs"] == ["input_ids", "attention_mask"] and r["outputs"] == ["logits"]
    assert r["max_abs_diff"] < 1e-4
    ort = apply_(copy.deepcopy(model), OnnxRuntimeConfig(), task=task)
    batch = _batch(3, 10)
    with torch.no_grad():
        ref = model(**batch, use_cache=False).logits
    assert (ort(**batch).logits - ref).abs().max() < 1e-4


@pytest.mark.slow  # torch's dynamo exporter: ~40 s for the tiny Llama on the 2-vCPU machine
def test_dynamo_exporter_is_used_where_the_legacy_one_fails(monkeypatch):
    from condense.export import onnx as onnx_mod

    real = onnx_mod._export

    def legacy_fails(spec, inputs, opset, *, dynamo):
        if not dynamo:
            raise RuntimeError("Exporting the operator 'aten::diff' to ONNX opset version 17 is not supported")
        return real(spec, inputs, opset, dynamo=dynamo)

    monkeypatch.setattr(onnx_mod, "_export", legacy_fails)
    model = _llama()
    ort = apply_(copy.deepcopy(model), OnnxRuntimeConfig(opset=18), task=_task(model, "logits"))
    assert lineage(ort)["transforms"][-1]["details"]["exporter"] == "dynamo"
    batch = _batch(2, 8)
    with torch.no_grad():
        ref = model(**batch, use_cache=False).logits
    assert (ort(**batch).logits - ref).abs().max() < 1e-4


def test_int8_auto_skips_a_failing_candidate_and_records_why(monkeypatch):
    from condense.quantize import backends

    real = backends.backend_config

    def broken_ort(backend, cfg, model):
        if backend is backends.Backend.ORT:
            raise RuntimeError("simulated ORT failure")
        return real(backend, cfg, model)

    monkeypatch.setattr(backends, "backend_config", broken_ort)
    model = _bert()
    task = _task(model, "last_hidden_state")
    with pytest.warns(UserWarning, match="backend 'ort' skipped: RuntimeError: simulated ORT failure"):
        q = apply_(copy.deepcopy(model), Int8Config(min_time_s=0.05, tolerance=0.5), task=task)
    d = lineage(q)["transforms"][-1]["details"]
    rows = {r["backend"]: r for r in d["candidates"]}
    assert rows["ort"]["error"] == "RuntimeError: simulated ORT failure" and rows["ort"]["p50_ms"] is None
    assert d["backend"] != "ort" and rows[d["backend"]]["error"] is None
    assert task.metrics(q)["agreement"] > 0.5


def test_export_model_writes_gpt2_fp32_and_int8_files(tmp_path):
    from condense.export.files import export_model

    model = _gpt2()
    task = _task(model, "logits")
    fp32 = export_model(model, task, tmp_path / "fp32")
    assert not fp32["int8"] and fp32["parity"]["max_abs_diff"] < 1e-4
    int8 = export_model(model, task, tmp_path / "int8", int8=True)
    assert int8["int8"] and int8["parity"]["min_cosine"] > 0.999  # measured 0.99991 on logits


def test_output_class_from_graph_metadata_builds_only_model_outputs():
    """A graph's metadata names the output class; a callable of transformers that is not a ModelOutput is not called."""
    from condense.export.keywords import build_output

    t = torch.ones(2)
    assert type(build_output("transformers.modeling_outputs:BaseModelOutput", ["last_hidden_state"], [t])).__name__ \
        == "BaseModelOutput"
    assert build_output("transformers.trainer_utils:set_seed", ["seed"], [t]) is t  # a function: plain tensors
    assert build_output("os:system", ["command"], [t]) is t  # outside transformers: never imported
