"""The `hf:PATH` task: a local Hugging Face model folder, measured and compressed like a built-in task.

Batches are what Hugging Face models take: dicts {"input_ids", "attention_mask"} of (B, T) LongTensors. The
task's `run` returns the tensor the model means (logits for LMs and classifiers, the last hidden states for
encoders), so every technique and the built-in evaluation see one tensor whatever replaced the model.
Training batches for causal LMs are `(input_ids, next_ids)` tensor pairs, the convention of the built-in tasks.
"""
from __future__ import annotations

import math
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.task import Task, to_device
from condense.data.stdlib_docs import RetrievalSet, retrieval_pairs, training_pairs, unlabelled_texts
from condense.errors import CondenseError
from condense.tasks.hf import evaluation as ev
from condense.tasks.hf.kinds import Kind
from condense.tasks.hf.loading import FolderInfo, inspect_folder, load_model, load_tokenizer
from condense.tasks.hf.text import Codec
from condense.tasks.minilm import retrieval_metrics
from condense.tasks.tinygpt import model_device, random_windows

PREFIX = "hf:"
PROMPT = "def "
TOKENIZERS = ("auto", "bytes")
_OUTPUT_KEY = {Kind.CAUSAL_LM: "logits", Kind.CLASSIFIER: "logits", Kind.ENCODER: "last_hidden_state"}
_PRIMARY = {Kind.CAUSAL_LM: ("bits_per_byte", False), Kind.CLASSIFIER: ("label_agreement", True),
            Kind.ENCODER: ("embedding_cosine", True)}
EVAL_BYTES, TRAIN_BYTES = 200_000, 1_000_000
CALIBRATION_TEXTS = 128
TRAIN_PAIRS, TRAIN_TOKENS = 16, 64  # encoders' training batches: docstring pairs per batch, tokens per text


def _positive(name: str, value: Any, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
        raise CondenseError(f"hf task option {name} must be an integer in 1..{hi}, got {value!r}; "
                            f"e.g. --task-option {name}=64")
    return value


def run_hf(model: nn.Module, batch: Any, *, kind: Kind) -> torch.Tensor:
    """Run one batch (a dict, or a (B, T) tensor of input ids) on `model`: the tensor its kind means."""
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch, "attention_mask": torch.ones_like(batch)}
    if not isinstance(batch, dict):
        raise CondenseError(f"a Hugging Face task takes dict batches {{'input_ids', 'attention_mask'}} or a tensor "
                            f"of input ids, got {type(batch).__name__}")
    batch = to_device(batch, model_device(model))
    kwargs: dict[str, Any] = {}
    if kind is Kind.CAUSAL_LM and _is_hf_model(model):
        kwargs["use_cache"] = False  # one forward pass: no KV cache to build (and none leaks into tracing)
    return ev.main_output(model(**batch, **kwargs), _OUTPUT_KEY[kind])


def _is_hf_model(model: nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def generate_hf(model: nn.Module, batch_size: int, new_tokens: int, *, prompt: list[int], pad_id: int,
                kind: Kind = Kind.CAUSAL_LM) -> int:
    """Greedy-decode `new_tokens` after `prompt` for `batch_size` rows; returns the tokens generated.

    A Hugging Face model decodes through its own `generate` with its KV cache; a model that replaced it (one
    without `generate`) re-runs the whole sequence per token, which is what it can do.
    """
    dev = model_device(model)
    ids = torch.tensor(prompt, dtype=torch.long, device=dev).repeat(batch_size, 1)  # (B, P)
    if hasattr(model, "generate") and _is_hf_model(model):
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=pad_id)
        return (out.shape[1] - ids.shape[1]) * batch_size
    for _ in range(new_tokens):
        logits = run_hf(model, ids, kind=kind)  # (B, T, V)
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True).to(ids.device)], dim=1)
    return new_tokens * batch_size


def lm_loss_hf(model: nn.Module, batch: Any, *, kind: Kind = Kind.CAUSAL_LM) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) on one `(input_ids, next_ids)` batch (or a dict with them as "labels")."""
    if isinstance(batch, dict):
        y = batch["labels"]
        x = {k: v for k, v in batch.items() if k != "labels"}
    else:
        x, y = batch
    logits = run_hf(model, x, kind=kind)  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.to(logits.device).reshape(-1))


def make_task(path: str, kind: str | None = None, tokenizer: str = "auto", seq_len: int | None = None,
              eval_windows: int = 32, eval_texts: int = 64, train_batch_size: int = 8) -> Task:
    """The task for the Hugging Face model folder `path` (config.json + safetensors), loaded offline.

    Args:
        kind: "causal-lm", "classifier" or "encoder"; default: from the config's `architectures`.
        tokenizer: "auto" (the folder's tokenizer when it has one, else byte ids) or "bytes".
        seq_len: tokens per sequence (default 128, or the model's positions when fewer).
        eval_windows: held-out windows scored for bits per byte (causal LMs).
        eval_texts: docstring texts compared with the original model (encoders, classifiers), and retrieval
            pairs scored (encoders).
        train_batch_size: sequences per fine-tuning batch (causal LMs).

    Example:
        >>> task = make_task("runs/my-llama")  # doctest: +SKIP
        >>> task.primary_metric
        'bits_per_byte'
    """
    if tokenizer not in TOKENIZERS:
        raise CondenseError(f"hf task option tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
    info = inspect_folder(path, kind)
    limit = info.max_positions or 1_000_000
    T = _positive("seq_len", seq_len, limit) if seq_len is not None else min(128, limit)
    _positive("eval_windows", eval_windows, 100_000)
    _positive("eval_texts", eval_texts, 10_000)
    _positive("train_batch_size", train_batch_size, 65_536)
    codec = Codec(info.vocab_size, load_tokenizer(info) if tokenizer == "auto" and info.has_tokenizer else None)
    # every option resolved, so the recorded spec rebuilds this task even if defaults change
    options = {"kind": info.kind.value, "tokenizer": "auto" if codec.tokenizer else "bytes", "seq_len": T,
               "eval_windows": eval_windows, "eval_texts": eval_texts, "train_batch_size": train_batch_size}
    metric, higher = _PRIMARY[info.kind]
    run = partial(run_hf, kind=info.kind)
    common = dict(name=f"hf-{Path(info.path).name}", model=partial(load_model, info, pad_id=codec.pad_id),
                  primary_metric=metric, higher_is_better=higher, run=run, batch_sizes=(1, 8),
                  description=f"Hugging Face {info.architecture} from {info.path} as {info.kind.value}; "
                              f"{codec.describe()}; {metric}",
                  spec={"name": PREFIX + info.path, "options": options},
                  extras={"hf_path": info.path, "kind": info.kind.value, "architecture": info.architecture,
                          "seq_len": T, "tokenizer": codec.describe()})
    if info.kind is Kind.CAUSAL_LM:
        return _causal_task(info, codec, T, eval_windows, train_batch_size, run, common)
    return _agreement_task(info, codec, T, eval_texts, run, common)


def _causal_task(info: FolderInfo, codec: Codec, T: int, eval_windows: int, train_batch_size: int, run: Any,
                 common: dict[str, Any]) -> Task:
    def val() -> torch.Tensor:
        return codec.corpus_ids("val", EVAL_BYTES)

    def train() -> torch.Tensor:
        return codec.corpus_ids("train", TRAIN_BYTES)

    def inputs(batch_size: int) -> dict[str, torch.Tensor]:
        ids = val()
        n = max(1, (ids.numel() - 1) // T)
        x = ev.lm_windows(ids, T, min(n, batch_size))[:, :-1]  # (b, T)
        x = x.repeat(math.ceil(batch_size / x.shape[0]), 1)[:batch_size].contiguous()  # (B, T)
        return {"input_ids": x, "attention_mask": torch.ones_like(x)}

    def evaluate(model: nn.Module) -> dict[str, float]:
        return ev.bits_per_byte(model, run, val(), codec, T, eval_windows)

    def calibration_data() -> Iterator[dict[str, torch.Tensor]]:
        for x, _ in random_windows(train(), 8, T, seed=1, n_batches=16):
            yield {"input_ids": x, "attention_mask": torch.ones_like(x)}

    def train_data() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return random_windows(train(), train_batch_size, T, seed=2, n_batches=10_000)

    prompt = codec.encode(PROMPT) or [codec.pad_id]
    task = Task(inputs=inputs, evaluate=evaluate, calibration_data=calibration_data, train_data=train_data,
                loss=lm_loss_hf, generate=partial(generate_hf, prompt=prompt, pad_id=codec.pad_id),
                input_kind="tokens", **common)
    task.description += ", decode tokens/s through the model's generate (KV cache)"
    return task


def _agreement_task(info: FolderInfo, codec: Codec, T: int, eval_texts: int, run: Any,
                    common: dict[str, Any]) -> Task:
    @lru_cache(maxsize=1)
    def pairs() -> RetrievalSet:  # parsing the stdlib's docstrings takes seconds: only when first needed
        return retrieval_pairs(eval_texts)

    @lru_cache(maxsize=1)
    def texts() -> tuple[str, ...]:  # other docstrings than the retrieval pairs': compared, then calibration
        return unlabelled_texts(eval_texts + CALIBRATION_TEXTS, exclude=pairs())

    def batches(items: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        return [codec.texts_batch(items[i:i + ev.EVAL_BATCH], T) for i in range(0, len(items), ev.EVAL_BATCH)]

    @lru_cache(maxsize=1)
    def eval_batches() -> list[dict[str, torch.Tensor]]:
        return batches(texts()[:eval_texts])

    reference: list[torch.Tensor] = []  # the original model's outputs, computed on first use

    def outputs(model: nn.Module) -> torch.Tensor:
        if info.kind is Kind.ENCODER:
            return ev.embeddings(model, run, eval_batches())
        return ev.class_logits(model, run, eval_batches())

    @torch.no_grad()  # callable outside Task.metrics too (a user's own loop, a training callback)
    def evaluate(model: nn.Module) -> dict[str, float]:
        if not reference:
            reference.append(outputs(load_model(info, pad_id=codec.pad_id)))
        got = outputs(model)
        if info.kind is Kind.CLASSIFIER:
            return ev.label_agreement(got, reference[0])
        q = ev.embeddings(model, run, batches(pairs().queries))  # (n, H)
        d = ev.embeddings(model, run, batches(pairs().documents))  # (n, H)
        return {**ev.embedding_agreement(got, reference[0]), **retrieval_metrics(q.numpy(), d.numpy())}

    def inputs(batch_size: int) -> dict[str, torch.Tensor]:
        return codec.texts_batch([texts()[i % eval_texts] for i in range(batch_size)], T)

    def calibration_data() -> Iterator[dict[str, torch.Tensor]]:
        for i in range(eval_texts, len(texts()), 8):  # texts outside the evaluation set
            yield codec.texts_batch(texts()[i:i + 8], T)

    def train_pairs() -> Iterator[dict[str, torch.Tensor]]:
        """Encoders' training batches: TRAIN_PAIRS (summary sentence, rest of the docstring) pairs from docstrings
        outside the retrieval pairs, the summaries first, then their bodies, cut to TRAIN_TOKENS tokens. Texts that
        belong together give distillation's in-batch relation term something to keep: recovering the pruned MiniLM
        on them reached 98.4% of dense MRR@10 (300 steps, 4 seeds) against 92.5% on lone paragraphs."""
        train = training_pairs(exclude=pairs())
        for i in range(0, len(train) - TRAIN_PAIRS + 1, TRAIN_PAIRS):
            chunk = train[i:i + TRAIN_PAIRS]
            yield codec.texts_batch([q for q, _ in chunk] + [d for _, d in chunk], min(T, TRAIN_TOKENS))

    def embed(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean-pooled sentence embeddings (B, H) of one batch: what embedding distillation matches."""
        return ev.mean_pool(run(model, batch), batch["attention_mask"])

    encoder = info.kind is Kind.ENCODER
    # encoders: unlabelled text pairs to distil a student on (embedding distillation needs no labels)
    task = Task(inputs=inputs, evaluate=evaluate, calibration_data=calibration_data, embed=embed if encoder else None,
                train_data=train_pairs if encoder else None, **common)
    if encoder:
        task.extras["embed"] = embed
    return task
