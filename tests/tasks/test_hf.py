"""`hf:PATH` tasks: tiny Hugging Face models built from configs offline, loaded back through the task, compared
with the original; evaluation, generation, the CLI, artifacts, write-back, and the folders that are refused."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import condense  # noqa: E402
from condense.cli import main  # noqa: E402
from condense.errors import CondenseError  # noqa: E402
from condense.tasks import get_task, task_from_spec, task_key  # noqa: E402
from condense.tasks.hf import save_hf, why_not_hf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
BERT = dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)


def _models() -> dict:
    t = transformers
    return {
        "llama": lambda: t.LlamaForCausalLM(t.LlamaConfig(
            vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)),  # grouped-query attention: 2 kv heads for 4
        "gpt2": lambda: t.GPT2LMHeadModel(t.GPT2Config(vocab_size=256, n_embd=32, n_layer=2, n_head=2,
                                                       n_positions=64, bos_token_id=0, eos_token_id=0)),
        "bert": lambda: t.BertModel(t.BertConfig(**BERT)),
        "bertcls": lambda: t.BertForSequenceClassification(t.BertConfig(**BERT, num_labels=3)),
    }


KIND = {"llama": ("causal-lm", "bits_per_byte"), "gpt2": ("causal-lm", "bits_per_byte"),
        "bert": ("encoder", "embedding_cosine"), "bertcls": ("classifier", "label_agreement")}
OPTS = {"eval_windows": 4, "eval_texts": 16, "seq_len": 32}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each tiny model saved with save_pretrained: name -> (folder, the original model)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, build in _models().items():
        torch.manual_seed(0)
        model = build().eval()
        model.save_pretrained(root / name)
        out[name] = (str(root / name), model)
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("name", list(KIND))
def test_task_model_equals_the_original(folders, name):
    path, original = folders[name]
    task = get_task("hf:" + path, **OPTS)
    assert (task.extras["kind"], task.primary_metric) == KIND[name]
    model = task.build_model()
    batch = task.batch(3)
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape == (3, 32)
    with torch.no_grad():
        got = task.run_batch(model, batch)
        out = original(**batch)
    want = out.last_hidden_state if name == "bert" else out.logits
    assert got.shape == want.shape
    assert _same(got, want) <= 1e-6


def test_causal_lm_bits_per_byte_and_training(folders):
    task = get_task("hf:" + folders["llama"][0], **OPTS)
    model = task.build_model()
    m = task.metrics(model)
    # an untrained model is close to uniform over 256 byte ids: 8 bits per byte
    assert math.isfinite(m["bits_per_byte"]) and 7.0 < m["bits_per_byte"] < 9.0
    assert m["tokens"] == 4 * 32
    x, y = next(iter(task.train_data()))
    assert x.shape == y.shape == (8, 32) and torch.equal(x[:, 1:], y[:, :-1])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(3):  # the same batch three times: fine-tuning through task.loss must lower its loss
        loss = task.loss(model, (x, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_decode_through_generate(folders):
    task = get_task("hf:" + folders["gpt2"][0], **OPTS)
    model = task.build_model()
    assert task.generate(model, 2, 5) == 10


def test_encoder_and_classifier_agreement(folders):
    enc = get_task("hf:" + folders["bert"][0], **OPTS)
    model = enc.build_model()
    m = enc.metrics(model)
    assert m["embedding_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert enc.evaluate(model)["embedding_cosine"] == pytest.approx(1.0, abs=1e-6)  # outside no_grad too
    # retrieval on docstring pairs, against embeddings computed here from the original model
    from condense.data.stdlib_docs import retrieval_pairs
    from condense.tasks.minilm import retrieval_metrics

    pairs, original = retrieval_pairs(16), folders["bert"][1]

    def embed(texts):
        ids = torch.zeros(len(texts), 32, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            row = list(t.encode("utf-8"))[:32]
            ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
        with torch.no_grad():
            h = original(input_ids=ids, attention_mask=mask).last_hidden_state  # (n, T, H)
        return ((h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy()

    want = retrieval_metrics(embed(pairs.queries), embed(pairs.documents))
    assert m["mrr@10"] == pytest.approx(want["mrr@10"], abs=1e-6) and m["recall@1"] == want["recall@1"]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    assert enc.metrics(model)["embedding_cosine"] < 0.999  # a changed model scores lower
    emb = enc.extras["embed"](model, enc.batch(2))
    assert emb.shape == (2, 32)

    cls = get_task("hf:" + folders["bertcls"][0], **OPTS)
    model = cls.build_model()
    m = cls.metrics(model)
    assert m["label_agreement"] == 1.0 and m["max_logit_change"] == 0.0


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_artifact_round_trip_rebuilds_from_the_folder(folders, name, tmp_path):
    task = get_task("hf:" + folders[name][0], **OPTS)
    model = task.build_model()
    condense.save(model, tmp_path / "art")
    loaded = condense.load(tmp_path / "art")  # the recorded hf: spec is rebuilt without trust_task
    batch = task.batch(2)
    with torch.no_grad():
        assert torch.equal(task.run_batch(loaded, batch), task.run_batch(model, batch))
    if name == "gpt2":  # tied embedding and head stay one tensor
        assert loaded.lm_head.weight is loaded.transformer.wte.weight
    rebuilt = task_from_spec(task.spec, source="test")
    assert rebuilt.spec == task.spec and rebuilt.extras["seq_len"] == 32


def test_task_key_names_one_folder_by_any_path(folders, monkeypatch):
    path = Path(folders["llama"][0])
    monkeypatch.chdir(path.parent)
    assert task_key("hf:" + path.name) == task_key("hf:" + str(path)) != task_key("hf:other")
    assert condense.hf_task(path.name, **OPTS).spec["name"] == "hf:" + str(path)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_save_hf_writes_a_folder_from_pretrained_opens(folders, name, tmp_path):
    path, _ = folders[name]
    task = get_task("hf:" + path, **OPTS)
    model = task.build_model()
    with torch.no_grad():  # a change config.json can hold
        next(p for n, p in model.named_parameters() if n.endswith("mlp.c_proj.weight" if name == "gpt2"
                                                                  else "mlp.down_proj.weight")).mul_(0.5)
    out = save_hf(model, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    batch = task.batch(2)
    with torch.no_grad():
        assert _same(back(**batch).logits, task.run_batch(model, batch)) <= 1e-6
    if name == "gpt2":
        assert back.lm_head.weight is back.transformer.wte.weight
    with pytest.raises(CondenseError, match="not an empty folder"):
        save_hf(model, out)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_save_hf_says_why_not(folders, tmp_path):
    task = get_task("hf:" + folders["llama"][0], **OPTS)
    model = task.build_model()
    mlp = model.model.layers[1].mlp
    mlp.up_proj = torch.nn.Linear(32, 48, bias=False)  # per-layer width: 48 where the config says 64
    assert "per-layer widths" in why_not_hf(model)
    mlp.down_proj = torch.nn.Sequential(torch.nn.Linear(48, 8), torch.nn.Linear(8, 32))  # a factorized layer
    with pytest.raises(CondenseError, match="mlp.down_proj.*condense.save"):
        save_hf(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    q = torch.ao.quantization.quantize_dynamic(task.build_model(), {torch.nn.Linear}, dtype=torch.qint8)
    assert "torch.ao.nn.quantized.dynamic" in why_not_hf(q)  # an int8 "Linear" is named by its module


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def test_refused_folders_exit_2_with_a_message(folders, tmp_path, capsys):
    rc, err = _cli(capsys, "measure", "--task", "hf:" + str(tmp_path / "missing"))
    assert rc == 2 and "no Hugging Face model folder" in err
    custom = tmp_path / "custom"
    custom.mkdir()
    cfg = json.loads((Path(folders["llama"][0]) / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (custom / "config.json").write_text(json.dumps(cfg))
    (custom / "modeling_evil.py").write_text("raise SystemExit('this must never run')\n")
    rc, err = _cli(capsys, "measure", "--task", "hf:" + str(custom))
    assert rc == 2 and "auto_map" in err and "never runs their code" in err
    cfg.pop("auto_map")
    cfg["architectures"] = ["EvilForCausalLM"]
    (custom / "config.json").write_text(json.dumps(cfg))
    rc, err = _cli(capsys, "measure", "--task", "hf:" + str(custom))
    assert rc == 2 and "'EvilForCausalLM'" in err and "does not ship" in err
    cfg["architectures"] = ["LlamaForCausalLM"]
    (custom / "config.json").write_text(json.dumps(cfg))
    (custom / "pytorch_model.bin").write_bytes(b"pickle")
    rc, err = _cli(capsys, "measure", "--task", "hf:" + str(custom))
    assert rc == 2 and "pickled weights" in err
    rc, err = _cli(capsys, "measure", "--task", "hf:" + folders["llama"][0], "--task-option", "kind=seq2seq")
    assert rc == 2 and "unknown Hugging Face task kind" in err


def test_measure_cli_runs_on_an_hf_folder(folders):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "condense", "measure", "--task", "hf:" + folders["llama"][0],
                        "--batch-sizes", "1", "--repeats", "2", "--task-option", "eval_windows=2",
                        "--task-option", "seq_len=16"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "decode tokens/s @ batch 1" in r.stdout and "bits_per_byte" in r.stdout


@pytest.fixture(scope="module")
def with_tokenizer(tmp_path_factory):
    """A BERT encoder and a Llama whose head is zero (uniform predictions), each with its own WordPiece tokenizer."""
    import string

    root = tmp_path_factory.mktemp("hf-tok")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase + string.digits
                                                                  + string.punctuation)
    (root / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = transformers.BertTokenizer(str(root / "vocab.txt"))
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(**{**BERT, "vocab_size": len(words)}))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64))
    torch.nn.init.zeros_(llama.lm_head.weight)
    for name, model in (("bert", bert), ("llama", llama)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root, tok, len(words)


def test_the_folders_own_tokenizer_is_used(with_tokenizer):
    root, tok, vocab = with_tokenizer
    task = get_task(f"hf:{root}/bert", **OPTS)
    assert "the folder's tokenizer" in task.description and task.spec["options"]["tokenizer"] == "auto"
    ids, mask = task.batch(2)["input_ids"], task.batch(2)["attention_mask"]
    n = int(mask[0].sum())
    assert ids[0, 0] == tok.cls_token_id and ids[0, n - 1] == tok.sep_token_id and (ids[0, n:] == 0).all()
    raw = get_task(f"hf:{root}/bert", tokenizer="bytes", **OPTS)
    assert "byte ids" in raw.description
    text_bytes = raw.batch(1)["input_ids"][0, :4].tolist()
    assert all(0 <= i < vocab for i in text_bytes) and raw.spec["options"]["tokenizer"] == "bytes"


def test_bits_per_byte_counts_the_text_bytes_of_the_tokens(with_tokenizer):
    root, tok, vocab = with_tokenizer
    task = get_task(f"hf:{root}/llama", **OPTS)
    m = task.metrics(task.build_model())
    # a zero head predicts uniformly: log2(vocab) bits per token, over the bytes those tokens decode to
    from condense.data.stdlib_source import corpus

    text = corpus("val", 200_000).tobytes().decode("utf-8", "replace")
    scored = tok(text, add_special_tokens=False)["input_ids"][1:4 * 32 + 1]
    n_bytes = len(tok.decode(scored, clean_up_tokenization_spaces=False).encode("utf-8"))
    assert m["loss"] == pytest.approx(math.log(vocab), rel=1e-5)
    assert m["bits_per_byte"] == pytest.approx(4 * 32 * math.log2(vocab) / n_bytes, rel=1e-5)


def test_a_decoder_classifier_without_pad_token_takes_batches(tmp_path):
    torch.manual_seed(0)
    original = transformers.LlamaForSequenceClassification(transformers.LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, num_labels=2)).eval()
    assert original.config.pad_token_id is None  # transformers refuses batches > 1 of this model as it is
    original.save_pretrained(tmp_path / "cls")
    task = get_task(f"hf:{tmp_path}/cls", **OPTS)
    model = task.build_model()
    batch = task.batch(3)
    original.config.pad_token_id = 0  # what the task pads with
    with torch.no_grad():
        assert _same(task.run_batch(model, batch), original(**batch).logits) <= 1e-6
    assert task.metrics(model)["label_agreement"] == 1.0


def test_a_masked_lm_folder_is_its_base_encoder(tmp_path):
    torch.manual_seed(0)
    original = transformers.BertForMaskedLM(transformers.BertConfig(**BERT)).eval()
    original.save_pretrained(tmp_path / "mlm")
    task = get_task(f"hf:{tmp_path}/mlm", **OPTS)
    assert task.extras["kind"] == "encoder"
    a, b = task.build_model(), task.build_model()
    assert type(a).__name__ == "BertModel"
    # the pooler the folder lacks is initialised the same way on every build (artifacts and references agree)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    batch = task.batch(2)
    with torch.no_grad():
        assert _same(task.run_batch(a, batch), original.bert(**batch).last_hidden_state) <= 1e-6


def test_an_artifact_takes_its_folder_by_any_path_and_no_other(folders, tmp_path, monkeypatch, capsys):
    path = Path(folders["gpt2"][0])
    task = get_task(f"hf:{path}", **OPTS)
    condense.save(task.build_model(), tmp_path / "art")
    monkeypatch.chdir(path.parent)
    measure = ["measure", "--model", str(tmp_path / "art"), "--batch-sizes", "1", "--repeats", "1", "--no-quality"]
    rc, err = _cli(capsys, *measure, "--task", f"hf:{path.name}", "--task-option", "seq_len=32")
    assert rc == 0, err
    rc, err = _cli(capsys, *measure, "--task", "hf:llama")
    assert rc == 2 and f"this artifact is for task hf:{path}" in err


def test_encoder_training_batches_are_docstring_pairs(folders):
    """An encoder task trains (distillation, pruning recovery) on docstring pairs outside the retrieval pairs: each
    batch holds TRAIN_PAIRS summaries, then their bodies, in the order of `training_pairs`."""
    from condense.data.stdlib_docs import retrieval_pairs, training_pairs
    from condense.tasks.hf.task import TRAIN_PAIRS

    enc = get_task("hf:" + folders["bert"][0], **OPTS)
    pairs = training_pairs(exclude=retrieval_pairs(OPTS["eval_texts"]))
    batches = list(enc.train_data())
    assert len(batches) == len(pairs) // TRAIN_PAIRS
    first = batches[0]
    assert first["input_ids"].shape == (2 * TRAIN_PAIRS, 32)  # seq_len 32 (under the 64-token training cut)
    for row, text in ((0, pairs[0][0]), (TRAIN_PAIRS, pairs[0][1]), (2 * TRAIN_PAIRS - 1, pairs[TRAIN_PAIRS - 1][1])):
        ids = list(text.encode("utf-8"))[:32]  # byte tokenizer
        assert first["input_ids"][row, :len(ids)].tolist() == ids
        assert int(first["attention_mask"][row].sum()) == len(ids)
