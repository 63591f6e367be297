"""LiteRT on Hugging Face models: dict batches in as keywords, the ModelOutput back, fixed shapes padded."""
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from condense.core.transforms import apply_  # noqa: E402
from condense.export.files import export_model  # noqa: E402
from condense.loading import load_exported  # noqa: E402
from condense.testing.zoo import zoo_task  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("row", ["minilm-bert"])  # two outputs; a decoder: the transform test below
def test_hf_model_exports_to_tflite_and_takes_the_same_keywords(row, tmp_path):
    task = zoo_task(row, small=True, root=tmp_path / "zoo")
    model = task.build_model().eval()
    rec = export_model(model, task, tmp_path / "m.tflite", format="tflite")
    assert rec["shapes"] == "static" and rec["output_class"].startswith("transformers.")
    assert rec["parity"]["max_abs_diff"] < 1e-4, rec["parity"]
    lm = load_exported(tmp_path / "m.tflite", task=task)
    batch = task.batch(3)
    key = "logits" if row == "gpt2" else "last_hidden_state"
    with torch.inference_mode():
        ref, got = model(**batch), lm(**batch, use_cache=None)
        assert type(got) is type(ref) and (getattr(got, key) - getattr(ref, key)).abs().max() < 1e-4
        short = {k: v[:, :5] for k, v in batch.items()}  # shorter than converted: padded, masked, cut back
        ref, got = getattr(model(**short), key), getattr(lm(**short), key)
        assert got.shape == ref.shape and (got - ref).abs().max() < 1e-4


def test_litert_transform_on_a_causal_lm_round_trips(tmp_path):
    import condense
    from condense.export.litert_runtime import LiteRtConfig

    task = zoo_task("llama", small=True, root=tmp_path / "zoo")
    model = task.build_model().eval()
    lm = apply_(model, LiteRtConfig(), task=task)
    loaded = condense.load(condense.save(lm, tmp_path / "a"), task=task)
    batch = task.batch(2)
    with torch.inference_mode():
        ref, got = model(**batch).logits, loaded(**batch).logits
    assert (ref - got).abs().max() < 1e-4
