"""The model zoo (condense.testing.zoo) and the compatibility-matrix cells (condense.testing.matrix): every zoo model
builds from a small config and survives condense.save / condense.load unchanged; a cell is measured end to end, and a
failing or overlong cell records why instead of stopping the run."""
import time

import pytest
import torch

pytest.importorskip("transformers")

import condense  # noqa: E402
from condense.testing import matrix, tiny_task  # noqa: E402
from condense.testing.zoo import ROWS, ResNet, zoo_task  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROUND_TRIP_BOUND = 1e-6  # save/load stores the fp32 weights exactly: outputs may differ only by float noise


@pytest.mark.parametrize("name", ROWS)
def test_zoo_model_survives_save_and_load(tmp_path, name):
    task = zoo_task(name, small=True, root=tmp_path / "zoo")
    model = task.build_model().eval()
    if task.extras.get("kind") == "encoder":  # its task.batch parses the stdlib's docstrings (seconds): skip that
        ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    else:
        batch = task.batch(2)
    with torch.no_grad():
        want = task.run_batch(model, batch)
        saved = condense.save(model, tmp_path / "artifact")
        got = task.run_batch(condense.load(saved, task=task).eval(), batch)
    assert got.shape == want.shape and got.shape[0] == 2
    assert float((got - want).abs().max()) <= ROUND_TRIP_BOUND


def test_zoo_models_are_the_named_architectures(tmp_path):
    arch = {n: zoo_task(n, small=True, root=tmp_path).build_model().__class__.__name__ for n in ROWS}
    assert arch == {"minilm-bert": "BertModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                    "gpt2": "GPT2LMHeadModel", "qwen2": "Qwen2ForCausalLM", "resnet": "ResNet"}
    llama = zoo_task("llama", small=True, root=tmp_path).build_model().config
    assert llama.num_key_value_heads < llama.num_attention_heads  # grouped-query attention


def test_resnet_output_shape():
    assert ResNet((8, 16))(torch.zeros(3, 1, 16, 16)).shape == (3, 10)


def test_unknown_zoo_row_names_the_valid_ones():
    with pytest.raises(condense.CondenseError, match="choose from: minilm-bert"):
        zoo_task("vgg")


def test_a_cell_runs_end_to_end():
    task = tiny_task()
    base = matrix.baseline(task, 8)
    cell = matrix.run_cell(task, base, "tiny", "dynamic-int8", rounds=2)
    assert cell.status == "ok", cell.reason
    assert cell.speed > 0 and 0.9 <= cell.cosine <= 1.0 + 1e-9 and 0 < cell.max_abs < 1.0
    assert abs(cell.quality_delta) <= 0.1  # int8 weights of a random MLP keep >= 90% argmax agreement
    assert cell.text().startswith(f"{cell.speed:.2f}x")


def test_a_failing_cell_records_its_reason(monkeypatch):
    def boom(model, task):
        raise RuntimeError("boom: the technique broke\nsecond line")

    monkeypatch.setitem(matrix.COLUMNS, "dynamic-int8", matrix.Column(boom))
    task = tiny_task()
    cell = matrix.run_cell(task, matrix.baseline(task, 8), "tiny", "dynamic-int8")
    assert (cell.status, cell.reason) == ("failed", "RuntimeError: boom: the technique broke")
    assert cell.text() == "failed: RuntimeError: boom: the technique broke"


def test_a_cell_over_its_time_limit_stops():
    def slow(model, task):
        time.sleep(5)
        return model

    task = tiny_task()
    t0 = time.perf_counter()
    cell = matrix.run_cell(task, matrix.baseline(task, 8), "tiny", "slow", matrix.Column(slow), time_limit_s=0.2)
    assert cell.status == "timeout" and time.perf_counter() - t0 < 2


def test_a_cell_needing_a_missing_module_is_skipped():
    task = tiny_task()
    col = matrix.Column(lambda m, t: m, needs="no_such_module_condense")
    cell = matrix.run_cell(task, matrix.baseline(task, 8), "tiny", "x", col)
    assert (cell.status, cell.reason) == ("skipped", "no_such_module_condense is not installed")


def test_bench_models_writes_the_table_between_its_markers(monkeypatch, tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import _common
    import bench_models

    def boom(model, task):
        raise RuntimeError("boom")

    monkeypatch.setattr(bench_models, "zoo_task", lambda name, **kw: tiny_task())
    monkeypatch.setitem(matrix.COLUMNS, "ort-int8", matrix.Column(boom))
    monkeypatch.setattr(_common, "BENCHMARKS", tmp_path / "BENCHMARKS.md")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Models condense did not write\n\n<!-- bench:models -->\nold\n<!-- /bench:models -->\n"
                      "\n## Next\n")
    monkeypatch.setattr(_common, "README", readme)
    bench_models.main(["--rows", "resnet", "--cols", "dynamic-int8,ort-int8", "--rounds", "2", "--threads", "1"])
    text = (tmp_path / "BENCHMARKS.md").read_text()
    table = text.split("<!-- bench:models -->")[1].split("<!-- /bench:models -->")[0]
    row = [line for line in table.splitlines() if line.startswith("| resnet |")]
    assert len(row) == 1 and "| agreement 1.0000 |" in row[0] and row[0].endswith("| failed: RuntimeError: boom |")
    assert "Measured: 1 of 2 cells" in table and "load average" in table
    in_readme = readme.read_text().split("<!-- bench:models -->")[1].split("<!-- /bench:models -->")[0]
    assert [ln for ln in in_readme.splitlines() if ln.startswith("| resnet |")] == row  # the same table
    assert "1 of 2 cells measured" in in_readme and "old" not in in_readme
    assert readme.read_text().endswith("<!-- /bench:models -->\n\n## Next\n")  # the rest of the README is kept


def test_the_readme_has_the_models_markers():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Models condense did not write", 1)[1].split("\n## ", 1)[0]
    assert section.count("<!-- bench:models -->") == 1 and section.count("<!-- /bench:models -->") == 1


def test_causal_lm_cells_time_decode_through_generate_where_the_model_still_generates(tmp_path):
    task = zoo_task("gpt2", small=True, root=tmp_path / "zoo")
    base = matrix.baseline(task, 2, decode_tokens=4, rounds=1)
    assert base.decode is not None and base.decode > 0
    cell = matrix.run_cell(task, base, "gpt2", "dynamic-int8", rounds=2)
    assert cell.status == "ok" and cell.decode > 0 and cell.decode_speed > 0
    assert cell.text().endswith(f", decode {cell.decode:.0f} tok/s ({cell.decode_speed:.2f}x)")

    class Runtime(torch.nn.Module):  # stands for a model replaced by a runtime: no generate() of its own
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, **kw):
            return self.m(**kw)

    other = matrix.run_cell(task, base, "gpt2", "rt", matrix.Column(lambda m, t: Runtime(m)), rounds=2)
    assert other.status == "ok" and other.decode is None and "decode" not in other.text()


def test_trained_lm_is_cached_by_config_and_steps(tmp_path):
    import dataclasses
    import os

    from condense.testing.zoo import SMALL_LM, lm_folder

    spec = dataclasses.replace(SMALL_LM["gpt2"], steps=2, batch_size=2, seq_len=16)
    first = lm_folder(spec, tmp_path)
    stamp = os.stat(first / "config.json").st_mtime_ns
    assert lm_folder(spec, tmp_path) == first and os.stat(first / "config.json").st_mtime_ns == stamp  # not retrained
    other = lm_folder(dataclasses.replace(spec, steps=3), tmp_path)
    assert other != first and sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])
    from safetensors.torch import load_file

    a, b = load_file(str(first / "model.safetensors")), load_file(str(other / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # a third training step changed the weights
