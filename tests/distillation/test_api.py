"""distill(): config validation, students from the teacher, learning, bad shapes, pipeline step and save/load."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import condense
from condense.core.config import config_from_dict
from condense.core.task import Task
from condense.core.transforms import apply_
from condense.distillation import DistillConfig, distill, student_from_teacher
from condense.errors import ConfigError
from condense.tasks.gpt import GPT, GPTConfig
from condense.testing import TinyMLP
from condense.train.loop import FitConfig


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)

CFG = GPTConfig(block_size=16, n_layer=4, n_head=2, n_embd=16)


def gpt_task() -> Task:
    torch.manual_seed(0)
    teacher = GPT(CFG).eval()
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 256, (8, 17), generator=g)
    batches = [(data[:4, :-1], data[:4, 1:]), (data[4:, :-1], data[4:, 1:])]
    return Task("toygpt", teacher, evaluate=lambda m: {"loss": 0.0}, primary_metric="loss", higher_is_better=False,
                inputs=data[:1, :-1], train_data=lambda: batches,
                loss=lambda m, b: F.cross_entropy(m(b[0]).reshape(-1, 256), b[1].reshape(-1)))


def test_config_round_trips_and_rejects_bad_values():
    for cfg in (DistillConfig(layers=3, temperature=4.0, finetune=FitConfig(steps=5)),
                DistillConfig(layers=(0, 2), width_ratio=0.5, alpha=1.0, hidden_weight=1.0)):
        assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert DistillConfig(finetune={"steps": 7}).finetune == FitConfig(steps=7)
    for bad in (dict(temperature=0), dict(temperature=-1.0), dict(alpha=1.5), dict(alpha=-0.1), dict(layers=0),
                dict(layers=(1, 1)), dict(width_ratio=0), dict(loss="mse"), dict(layer_criterion="random")):
        with pytest.raises(ConfigError):
            DistillConfig(**bad)


def test_student_keeps_spread_layers_and_their_weights():
    torch.manual_seed(0)
    teacher = GPT(CFG)
    student, details = student_from_teacher(teacher, DistillConfig(layers=2))
    assert details == {"container": "blocks", "kept": [1, 3], "n_before": 4}
    assert len(student.blocks) == 2 and student.config.n_layer == 2 and len(teacher.blocks) == 4
    assert torch.equal(student.blocks[0].mlp.fc_in.weight, teacher.blocks[1].mlp.fc_in.weight)
    narrow, _ = student_from_teacher(teacher, DistillConfig(layers=(0, 3), width_ratio=0.5))
    assert [b.mlp.fc_in.out_features for b in narrow.blocks] == [32, 32]  # 64 -> 32
    with pytest.raises(ConfigError, match="names blocks"):
        student_from_teacher(teacher, DistillConfig(layers=(0, 9)))


def test_measured_layer_choice_keeps_the_blocks_that_matter():
    from condense.core.transforms import TransformContext

    torch.manual_seed(0)
    teacher = GPT(CFG).eval()
    with torch.no_grad():  # blocks 1 and 3 add nothing to the residual stream
        for b in (teacher.blocks[1], teacher.blocks[3]):
            for lin in (b.attn.o_proj, b.mlp.fc_out):
                lin.weight.zero_()
                lin.bias.zero_()
    ctx = TransformContext(calibration=[torch.randint(0, 256, (4, 12))])
    student, details = student_from_teacher(teacher, DistillConfig(layers=2, layer_criterion="subset"), ctx)
    assert details["kept"] == [0, 2]  # the spread default would keep [1, 3], the two that do nothing
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert torch.allclose(student(x), teacher(x), atol=1e-5)


def test_distillation_moves_the_student_towards_the_teacher():
    torch.manual_seed(0)
    teacher, student = TinyMLP().eval(), TinyMLP()
    x = torch.randn(64, 8)

    def gap() -> float:
        with torch.no_grad():
            return float(F.kl_div(student(x).log_softmax(-1), teacher(x).log_softmax(-1), log_target=True,
                                  reduction="batchmean"))

    before = gap()
    distill(teacher, student, DistillConfig(alpha=1.0, temperature=1.0, fit=FitConfig(steps=150, lr=1e-2)), [x])
    assert gap() < 0.2 * before


def test_hidden_state_distillation_trains_a_projection_for_a_narrower_student():
    task = gpt_task()
    teacher = task.build_model()
    torch.manual_seed(1)
    student = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=8))  # narrower residual stream
    losses = []
    from condense.distillation import api

    real_fit = api.fit
    api.fit = lambda *a, **k: losses.extend(real_fit(*a, **k)) or losses
    try:
        distill(teacher, student, DistillConfig(hidden_weight=1.0, fit=FitConfig(steps=30, lr=3e-3)), task=task)
    finally:
        api.fit = real_fit
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5])


def test_unmatched_outputs_are_a_clear_error():
    teacher = TinyMLP()
    student = nn.Sequential(nn.Linear(8, 3))
    with pytest.raises(ConfigError, match=r"outputs cannot be matched.*\(4, 4\).*\(4, 3\)"):
        distill(teacher, student, DistillConfig(finetune=FitConfig(steps=1)), [torch.randn(4, 8)])
    with pytest.raises(ConfigError, match="needs data"):
        distill(teacher, TinyMLP(), DistillConfig())


def test_pipeline_step_builds_student_and_artifact_reloads(tmp_path):
    task = gpt_task()
    teacher = task.build_model()
    student = apply_(copy.deepcopy(teacher), DistillConfig(layers=2, width_ratio=0.75, finetune=FitConfig(steps=3)),
                     task=task)
    assert len(student.blocks) == 2 and student.blocks[0].mlp.fc_in.out_features == 48
    path = condense.save(student, tmp_path / "student")
    loaded = condense.load(path, model=GPT(CFG))
    x = task.batch(2)
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))


def test_sentence_encoder_student_learns_teacher_embeddings_with_attention_maps():
    from tokenizers import Tokenizer

    from condense.tasks.bert import Bert, BertConfig
    from condense.tasks.encoder import SentenceEncoder, minilm_path

    torch.manual_seed(0)
    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    teacher = SentenceEncoder(Bert(BertConfig(hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64)),
                              tok, max_seq_length=32).eval()
    texts = ["return the sum of two numbers", "open a file for reading", "sort a list in place",
             "parse a date from a string", "join path components", "compute a hash of bytes"]
    cfg = DistillConfig(layers=2, attention_weight=0.5, fit=FitConfig(steps=15, lr=5e-3))
    untrained, _ = student_from_teacher(teacher, cfg)

    def cos(s) -> float:
        return float((torch.tensor(s.encode(texts)) * torch.tensor(teacher.encode(texts))).sum(-1).mean())

    student = distill(teacher, None, cfg, [texts])
    assert len(student.bert.layers) == 2 and len(teacher.bert.layers) == 4
    assert 1 - cos(student) < 0.5 * (1 - cos(untrained))


def test_pipeline_step_pairs_hidden_states_with_the_blocks_the_student_kept(monkeypatch):
    from condense.distillation import api

    seen = []
    real = api.paired_layers
    monkeypatch.setattr(api, "paired_layers", lambda *a: seen.append(a) or real(*a))
    task = gpt_task()
    apply_(copy.deepcopy(task.build_model()),
           DistillConfig(layers=(0, 1), hidden_weight=1.0, finetune=FitConfig(steps=1)), task=task)
    assert seen == [(4, 2, [0, 1])]  # not spread(4, 2) == [1, 3]


def test_unlabelled_batches_follow_each_labelled_one_and_learn_only_the_teachers_soft_targets():
    seen = []

    class Spy(nn.Module):  # a teacher that records which batches it labels
        def __init__(self):
            super().__init__()
            self.net = TinyMLP()

        def forward(self, x):
            seen.append(float(x[0, 0]))
            return self.net(x)

    labelled = [(torch.zeros(4, 8), torch.zeros(4, dtype=torch.long))]
    task = Task("t", TinyMLP(), evaluate=dict, primary_metric="m", inputs=torch.zeros(1, 8),
                train_data=lambda: labelled, unlabelled_data=lambda: [torch.ones(4, 8), torch.full((4, 8), 2.0)])
    distill(Spy(), TinyMLP(), DistillConfig(unlabelled=2, finetune=FitConfig(steps=6)), task=task)
    assert seen[-7:] == [0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0]  # set-up checks on the first batch, then 6 steps
    with pytest.raises(ConfigError, match="unlabelled_data"):
        distill(TinyMLP(), TinyMLP(), DistillConfig(unlabelled=1, finetune=FitConfig(steps=1)),
                task=Task("t", TinyMLP(), evaluate=dict, primary_metric="m", inputs=torch.zeros(1, 8),
                          train_data=lambda: labelled))
    with pytest.raises(ConfigError, match="unlabelled"):
        DistillConfig(unlabelled=-1)
