"""Transfer learning: layer groups, freezing, layer-wise learning rates, the minilm-topics data, and
`condense finetune` end to end on a tiny BERT (the pretrained-vs-scratch figures: bench/bench_data_efficiency.py)."""
import json
from functools import partial

import pytest
import torch

from condense.core.task import Task
from condense.data.stdlib_topics import TOPICS, topic_split
from condense.errors import ConfigError
from condense.tasks.bert import Bert, BertConfig
from condense.tasks.minilm_topics import TopicClassifier, _train_data, accuracy, loss, tokenize
from condense.train.optim import build_optimizer
from condense.train.transfer import TransferConfig, finetune, frozen_groups, layer_groups, param_groups

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["embeddings", "layers:0", "layers:1", "layers:2", "head"]


def _tiny(seed=0):
    torch.manual_seed(seed)
    return TopicClassifier(Bert(BertConfig(hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32,
                                           max_position=64)), len(TOPICS))


def tiny_topics_task(labels_per_class: int = 2) -> Task:
    """minilm-topics' data and loss on a 3-layer, 16-wide BERT (pretrained = seed 0, scratch = seed 1)."""
    s = topic_split(labels_per_class, 2)
    return Task("tiny-topics", model=partial(_tiny, 0), skeleton=partial(_tiny, 1), primary_metric="accuracy",
                evaluate=lambda m: {"accuracy": accuracy(m, s.test_texts, s.test_labels, 16)},
                inputs=lambda n: tokenize(s.test_texts[:n], 16),
                train_data=partial(_train_data, s.train_texts, s.train_labels, 16), loss=loss)


def test_frozen_groups_by_name_range_and_count_and_errors_name_the_groups():
    assert frozen_groups(NAMES, "embeddings,layers:0-1") == ["embeddings", "layers:0", "layers:1"]
    assert frozen_groups(NAMES, "layers:2, embeddings") == ["embeddings", "layers:2"]
    assert frozen_groups(NAMES, 2) == ["embeddings", "layers:0"]
    assert frozen_groups(NAMES, None) == [] == frozen_groups(NAMES, 0)
    with pytest.raises(ConfigError, match="no layer group 'layers:3'"):
        frozen_groups(NAMES, "layers:0-3")
    with pytest.raises(ConfigError, match="freeze at most 4"):
        frozen_groups(NAMES, 5)
    with pytest.raises(ConfigError, match="freeze must be None"):
        TransferConfig(freeze=-1)


def test_param_groups_freeze_and_decay_the_learning_rate_layer_by_layer():
    m = _tiny()
    assert [n for n, _ in layer_groups(m)] == NAMES
    cfg = TransferConfig(lr=1e-3, head_lr=1e-2, lr_decay=0.5, freeze="embeddings")
    groups = param_groups(m, cfg)
    assert [g["name"] for g in groups] == ["head", "layers:2", "layers:1", "layers:0"]
    assert all(not p.requires_grad for p in m.bert.embeddings.parameters())
    opt = build_optimizer(groups, cfg)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-2, 5e-4, 2.5e-4, 1.25e-4])
    with pytest.raises(ConfigError, match="no layer grouping is registered for Linear"):
        layer_groups(torch.nn.Linear(2, 2))


def test_finetune_keeps_frozen_layers_and_trains_the_rest():
    task = tiny_topics_task()
    m = task.build_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = finetune(task, TransferConfig(steps=3, lr=1e-3, freeze=2, tensorboard=False), m)
    after = m.state_dict()
    frozen = [k for k in before if k.startswith(("bert.embeddings.", "bert.layers.0."))]
    trained = [k for k in before if k.startswith(("bert.layers.1.", "bert.layers.2.", "head."))]
    assert frozen and trained and r.steps == 3
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in trained if k.endswith("weight"))


def test_topic_split_counts_and_disjoint_parts():
    s = topic_split(labels_per_class=3, test_per_class=4)
    assert [s.train_labels.count(c) for c in range(len(TOPICS))] == [3] * len(TOPICS)
    assert [s.test_labels.count(c) for c in range(len(TOPICS))] == [4] * len(TOPICS)
    parts = [set(s.train_texts), set(s.test_texts), set(s.unlabelled_texts)]
    assert sum(map(len, parts)) == len(set().union(*parts))  # no text in two parts
    assert s == topic_split(labels_per_class=3, test_per_class=4, label_seed=0)
    assert s.train_texts != topic_split(labels_per_class=3, test_per_class=4, label_seed=1).train_texts
    with pytest.raises(ConfigError, match="fewer than"):
        topic_split(labels_per_class=1000)


def test_cli_finetune_prints_both_runs_and_saves_an_artifact_that_loads(tmp_path, capsys):
    from condense.cli import main
    from condense.loading import load

    out = tmp_path / "run"
    code = main(["finetune", "--task", "tests.train.test_transfer:tiny_topics_task", "--set", "labels_per_class=3",
                 "--set", "freeze=embeddings", "--set", "eval_every=2", "--set", "target=0.0", "--steps", "2",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| pretrained |" in printed and "| from scratch |" in printed
    rec = json.loads((out / "finetune.json").read_text())
    assert [r["variant"] for r in rec["runs"]] == ["pretrained", "from scratch"]
    assert rec["runs"][0]["samples"] == 2 * 16 and rec["runs"][0]["step_to_target"] == 2
    assert rec["task"]["options"] == {"labels_per_class": 3} and rec["config"]["freeze"] == "embeddings"
    task = tiny_topics_task(3)
    model = load(out / "model", task=task)
    batch = task.batch(2)
    assert model(**batch).shape == (2, len(TOPICS))
