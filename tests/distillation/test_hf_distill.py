"""Distillation on Hugging Face models built from tiny configs offline: ModelOutput logits (Llama 4 -> 2 blocks,
KL to the teacher falls, the student generates), embedding distillation of a BertModel (cosine to the teacher
rises), the (inputs, target) batch convention, and the search's distill knob check on these models."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")

from condense.core.task import Task  # noqa: E402
from condense.distillation import DistillConfig, distill, student_from_teacher  # noqa: E402
from condense.distillation.outputs import mean_pooled  # noqa: E402
from condense.searching.config import SearchConfig  # noqa: E402
from condense.searching.knobs import check_distill  # noqa: E402
from condense.train.loop import FitConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
V = 64


def llama(layers: int = 4) -> nn.Module:
    torch.manual_seed(0)
    t = transformers
    m = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    with torch.no_grad():  # sharper next-token distributions than the random init's near-uniform ones
        m.lm_head.weight.mul_(40)
    return m.eval()


def gpt2() -> nn.Module:
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=4, n_head=2,
                                                                n_positions=64, bos_token_id=0,
                                                                eos_token_id=0)).eval()


def bert() -> nn.Module:
    torch.manual_seed(0)
    return transformers.BertModel(transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=4,
                                                          num_attention_heads=2, intermediate_size=64,
                                                          max_position_embeddings=64,
                                                          initializer_range=0.3)).eval()  # blocks that matter


def token_batches(n: int, seed: int, pad: bool = False) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, V, (8, 16), generator=g)
        mask = torch.ones_like(ids)
        if pad:
            mask[:, 12:] = 0  # some padding the pooling must skip
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@torch.no_grad()
def kl_to(teacher: nn.Module, student: nn.Module, batches: list[dict]) -> float:
    """Mean per-token KL(teacher || student) in nats on `batches`."""
    total = 0.0
    for b in batches:
        t = teacher(**b).logits.reshape(-1, V).log_softmax(-1)
        s = student(**b).logits.reshape(-1, V).log_softmax(-1)
        total += float(F.kl_div(s, t, log_target=True, reduction="batchmean"))
    return total / len(batches)


def test_llama_logits_from_model_output_kl_falls_and_student_generates():
    teacher = llama()
    assert type(teacher(**token_batches(1, 0)[0])).__name__ == "CausalLMOutputWithPast"  # what used to fail
    held_out = token_batches(2, 99)
    untrained, _ = student_from_teacher(teacher, DistillConfig(layers=2))
    before = kl_to(teacher, untrained, held_out)
    train = token_batches(8, 1)
    student = distill(teacher, None, DistillConfig(layers=2, temperature=1.0, hidden_weight=0.5,
                                                   finetune=FitConfig(steps=40, lr=3e-3)), lambda: train)
    after = kl_to(teacher, student, held_out)
    assert before > 0.05, before  # the 2-block student starts measurably away from the teacher
    assert after < 0.7 * before, (before, after)  # distillation closes at least 30% of the KL gap
    # the HF config and the attention modules' KV-cache slots follow the kept blocks (1, 3) -> 0, 1
    assert len(student.model.layers) == student.config.num_hidden_layers == 2
    assert [blk.self_attn.layer_idx for blk in student.model.layers] == [0, 1]
    prompt = torch.tensor([[1, 2, 3]])
    out = student.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4,
                           min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)
    # the cached decode agrees with re-running the whole sequence (cache indices consistent)
    with torch.no_grad():
        ids = prompt
        for _ in range(4):
            ids = torch.cat([ids, student(input_ids=ids).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, ids)


@torch.no_grad()
def cosine_to(teacher: nn.Module, student: nn.Module, batches: list[dict]) -> float:
    cos = [F.cosine_similarity(mean_pooled(student(**b).last_hidden_state, b),
                               mean_pooled(teacher(**b).last_hidden_state, b), dim=-1).mean() for b in batches]
    return float(torch.stack(cos).mean())


def test_bert_encoder_gets_embedding_distillation_cosine_rises():
    teacher = bert()
    held_out = token_batches(2, 99, pad=True)
    untrained, _ = student_from_teacher(teacher, DistillConfig(layers=1))
    before = cosine_to(teacher, untrained, held_out)
    train = token_batches(8, 1, pad=True)
    calls = []

    def embed(model, inputs):  # the task-declared embedding function: mean-pooled last hidden states
        calls.append(1)
        return mean_pooled(model(**inputs).last_hidden_state, inputs)

    task = Task("bert", teacher, evaluate=lambda m: {"x": 0.0}, primary_metric="x", inputs=train[0],
                train_data=lambda: train, embed=embed)
    student = distill(teacher, None, DistillConfig(layers=1, finetune=FitConfig(steps=30, lr=3e-3)), task=task)
    after = cosine_to(teacher, student, held_out)
    assert calls  # the task's embed ran (embedding distillation, not logits)
    assert after > before + 0.5 * (1 - before), (before, after)  # at least half of the cosine gap closed
    assert student.config.num_hidden_layers == len(student.encoder.layer) == 1
    # without a task: a BaseModelOutput has hidden states only, so loss="auto" pools them by default
    plain = distill(teacher, None, DistillConfig(layers=1, finetune=FitConfig(steps=30, lr=3e-3)), lambda: train)
    assert cosine_to(teacher, plain, held_out) > before + 0.5 * (1 - before)


class OneInput(nn.Module):
    """Fails loudly when a training batch's target is passed as a second positional input."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(6, 3)
        self.seen: list[tuple] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return self.net(x)


def test_inputs_float_target_batches_feed_only_the_inputs():
    torch.manual_seed(0)
    teacher, student = OneInput(), OneInput()
    data = [(torch.randn(5, 6), torch.randn(5, 3)) for _ in range(3)]  # (inputs, float regression target)
    with pytest.warns(UserWarning, match="float targets"):
        distill(teacher, student, DistillConfig(finetune=FitConfig(steps=3)), data)
    assert set(student.seen) == set(teacher.seen) == {(5, 6)}
    # with a task loss, the float target is scored by it (weighted 1 - alpha)
    scored = []

    def loss(model, batch):
        scored.append(batch[1].shape)
        return F.mse_loss(model(batch[0]), batch[1])

    task = Task("reg", teacher, evaluate=lambda m: {"x": 0.0}, primary_metric="x", inputs=data[0][0], loss=loss)
    distill(teacher, OneInput(), DistillConfig(finetune=FitConfig(steps=3)), data, task=task)
    assert scored == [torch.Size([5, 3])] * 3


@pytest.mark.parametrize("build", [llama, gpt2, bert], ids=["llama", "gpt2", "bert"])
def test_search_distill_knob_check_passes_and_student_runs(build):
    model = build()
    batch = token_batches(1, 0)[0]
    task = Task("hf", model, evaluate=lambda m: {"x": 0.0}, primary_metric="x", inputs=batch,
                train_data=lambda: [batch])
    check_distill(model, task, SearchConfig())  # raised before: no student could be built and run
    student, _ = student_from_teacher(copy.deepcopy(model), DistillConfig(layers=2))
    assert student.config.num_hidden_layers == 2
    with torch.no_grad():
        student(**batch)


def test_replay_rebuilds_the_gpt2_student_with_renumbered_cache_slots():
    from condense.distillation.api import _replay  # what condense.load runs from the lineage entry

    student, details = student_from_teacher(gpt2(), DistillConfig(layers=2))
    rebuilt = _replay(gpt2(), DistillConfig(layers=2), details)
    assert details["kept"] == [1, 3] and rebuilt.config.n_layer == 2
    assert [blk.attn.layer_idx for blk in rebuilt.transformer.h] == [0, 1]
    batch = token_batches(1, 0)[0]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(**batch).logits, student(**batch).logits, rtol=0, atol=1e-6)
    out = rebuilt.generate(input_ids=torch.tensor([[1, 2]]), max_new_tokens=3, min_new_tokens=3, do_sample=False,
                           pad_token_id=0)
    assert out.shape == (1, 5)
