"""LiteRT (.tflite) export: parity with PyTorch in the interpreter, task quality, int8, pruned models, CLI, errors."""
import builtins
import copy
import json
import subprocess
import sys

import pytest
import torch

import condense
from condense.cli import main
from condense.core.transforms import apply_
from condense.errors import CondenseError
from condense.export.files import export_model
from condense.loading import load_exported

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    task = condense.get_task("digits")
    return task, task.build_model()


@pytest.fixture(scope="module")
def fp32(digits, tmp_path_factory):
    task, model = digits
    out = tmp_path_factory.mktemp("litert") / "digits.tflite"
    return out, export_model(model, task, out, format="tflite")


def test_fp32_export_matches_pytorch_and_keeps_accuracy(digits, fp32):
    task, model = digits
    path, rec = fp32
    assert rec["parity"]["max_abs_diff"] < 1e-4 and rec["parity_against"] == "pytorch" and rec["int8"] is None
    assert rec["quality"]["litert"] == rec["quality"]["source"] == task.metrics(model)
    assert path.stat().st_size == rec["bytes"]
    assert json.loads(path.with_suffix(".json").read_text())["parity"] == rec["parity"]
    loaded = load_exported(path)  # the batch axis is dynamic: other batch sizes than the traced one (2)
    x = task.batch(37)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), model(x), atol=1e-4)


def test_int8_within_one_point_of_fp32(digits, fp32, tmp_path):
    task, _ = digits
    _, ref = fp32
    for mode in ("full", "dynamic"):
        rec = export_model(task.build_model(), task, tmp_path / f"{mode}.tflite", format="tflite", int8=True,
                           int8_mode=mode)
        assert rec["int8"] == mode and rec["bytes"] < 0.35 * ref["bytes"], rec["bytes"]  # int8 weights
        assert rec["quality"]["litert"]["accuracy"] >= ref["quality"]["litert"]["accuracy"] - 0.01, (mode, rec)
    full = load_exported(tmp_path / "full.tflite", task="digits")
    assert full.is_int8 and full(task.batch(3)).dtype == torch.float32  # int8 in the graph, float at the boundary


def test_pruned_model_exports_through_the_cli(digits, tmp_path, capsys):
    from condense.prune import prune_
    from condense.prune.structured import StructuredConfig

    task, model = digits
    pruned = prune_(copy.deepcopy(model), StructuredConfig(ratio=0.5))
    assert pruned.classifier.in_features == 64  # really smaller: 128 -> 64 channels
    art = condense.save(pruned, tmp_path / "pruned")
    out = tmp_path / "x.tflite"
    assert main(["export", "--model", str(art), "--format", "tflite", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rec = json.loads(out.with_suffix(".json").read_text())
    assert out.stat().st_size == rec["bytes"] and rec["format"] == "tflite" and "LiteRT interpreter" in printed
    assert rec["parity"]["max_abs_diff"] < 1e-4
    assert rec["quality"]["litert"] == rec["quality"]["source"] == task.metrics(pruned)
    assert [t["config"]["type"] for t in rec["source_transforms"]] == ["StructuredConfig"]


def test_recipe_transform_runs_in_litert_and_round_trips(digits, tmp_path):
    from condense.export import LiteRtConfig, LiteRtModule
    from condense.recipes.steps import STEP_KINDS, resolve_class

    task, model = digits
    assert resolve_class(STEP_KINDS.get("export").methods["tflite-int8"], where="t")().quantize == "dynamic"
    lm = apply_(copy.deepcopy(model), LiteRtConfig(), task=task)
    assert isinstance(lm, LiteRtModule)
    entry = condense.core.lineage.lineage(lm)["transforms"][-1]
    assert entry["config"] == LiteRtConfig().to_dict() and entry["details"]["parity_vs_torch"]["max_abs_diff"] < 1e-4
    loaded = condense.load(condense.save(lm, tmp_path / "a"))
    x = task.batch(5)
    assert isinstance(loaded, LiteRtModule) and torch.equal(loaded(x), lm(x))
    from condense.measurement.macs import count_macs

    one = task.batch(1)
    assert count_macs(lm, lambda: lm(one)) == count_macs(model, lambda: model(one))  # recorded at conversion
    assert count_macs(loaded, lambda: loaded(one)) == count_macs(model, lambda: model(one))  # and kept by save/load


def test_bert_encoder_converts_at_fixed_shapes_and_encodes_like_pytorch():
    """litert-torch 0.10 cannot lower BERT's mask indexing on dynamic axes: the fallback converts at batch 1 and the
    longest sequence, and the wrapper pads and runs sample by sample, so encode() still matches."""
    pytest.importorskip("litert_torch")
    from tokenizers import Tokenizer

    from condense.export.litert_runtime import LiteRtSentenceEncoder, build_litert
    from condense.tasks.bert import Bert, BertConfig
    from condense.tasks.encoder import SentenceEncoder, minilm_path

    torch.manual_seed(0)
    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    enc = SentenceEncoder(Bert(BertConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)), tok,
                          max_seq_length=32).eval()
    texts = ["return the sum", "open a file and read every line of it into a list", "sort", "a b c d e f"]
    lm, details = build_litert(enc, texts[:2])
    assert isinstance(lm, LiteRtSentenceEncoder) and details["shapes"] == "static"
    assert lm.graph.static_shape(0) == (1, 32) and details["parity_vs_torch"]["max_abs_diff"] < 1e-5
    ref, got = torch.as_tensor(enc.encode(texts)), torch.as_tensor(lm.encode(texts))
    assert got.shape == (4, 32) and (ref - got).abs().max() < 1e-5


def test_conversion_failure_names_the_op():
    pytest.importorskip("litert_torch")
    from condense.export.litert import tflite_bytes

    class Bessel(torch.nn.Module):
        def forward(self, x):
            return torch.special.i0(x)  # no LiteRT lowering

    with pytest.raises(CondenseError, match=r"at op aten\.i0"):
        tflite_bytes(Bessel(), (torch.ones(2, 3),))


def test_onnx_runtime_model_is_refused_with_the_fix(digits, tmp_path):
    from condense.export import OnnxRuntimeConfig

    task, model = digits
    ort = apply_(copy.deepcopy(model), OnnxRuntimeConfig(), task=task)
    with pytest.raises(CondenseError, match="runs in ONNX Runtime.*PyTorch version"):
        export_model(ort, task, tmp_path / "m.tflite", format="tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    from condense.export import litert

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.split(".")[0] in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(CondenseError, match=r"pip install 'condense\[litert\]'"):
        litert.import_litert_torch()
    with pytest.raises(CondenseError, match=r"pip install 'condense\[litert\]'"):
        export_model(torch.nn.Linear(2, 2), object(), tmp_path / "m.tflite", format="tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_import_condense_does_not_load_litert():
    code = ("import sys, condense, condense.export, condense.recipes; "
            "print(sorted(m for m in ('litert_torch', 'ai_edge_litert', 'ai_edge_quantizer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_folder_holding_an_earlier_tflite_export_may_be_exported_into_again(tmp_path):
    from condense.core.outputs import check_output_dir

    (tmp_path / "model.tflite").write_bytes(b"x")
    check_output_dir(tmp_path, kind="export")  # no error: an export folder, not someone else's files
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(CondenseError, match="not a condense"):
        check_output_dir(other, kind="export")  # someone else's folder is still refused
