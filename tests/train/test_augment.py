"""Augmentations: deterministic under a seed, shapes and targets kept, exact shifts, token rates within a bound,
clear errors for a mismatched augmentation, and applied (reproducibly) by the training loop."""
import pytest
import torch
from torch import nn

from condense.errors import ConfigError
from condense.train.augment import (AUGMENTATIONS, ImageAugment, TokenAugment, augment_batch, batch_augmenter,
                                    resolve_augmentation, shift_images)
from condense.train.loop import FitConfig, fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    if kind == "image":
        return torch.rand(16, 1, 8, 8, generator=g)
    return torch.randint(1, 256, (16, 32), generator=g)


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_every_augmentation_is_seeded_and_keeps_shapes_and_targets(name):
    aug = AUGMENTATIONS.get(name)
    x, y = _inputs(aug.kind), torch.arange(16)
    out1 = augment_batch((x, y), lambda t: aug(t, torch.Generator().manual_seed(1)))
    out2 = augment_batch((x, y), lambda t: aug(t, torch.Generator().manual_seed(1)))
    out3 = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(out1[0], out2[0]) and not torch.equal(out1[0], out3)
    assert out1[0].shape == x.shape and out1[0].dtype == x.dtype and not torch.equal(out1[0], x)
    assert torch.equal(out1[1], y)  # targets untouched
    if aug.kind == "image":  # within the input's value range (and 0, the fill value)
        assert out1[0].min() >= 0 and out1[0].max() <= x.max()


def _rolled(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference: torch.roll, then zero the rows/columns that wrapped around."""
    r = torch.roll(x, (dy, dx), dims=(2, 3)).clone()
    if dy > 0:
        r[:, :, :dy] = 0
    if dy < 0:
        r[:, :, dy:] = 0
    if dx > 0:
        r[:, :, :, :dx] = 0
    if dx < 0:
        r[:, :, :, dx:] = 0
    return r


def test_shifts_move_pixels_by_exactly_the_stated_amount():
    x = torch.rand(25, 2, 8, 8)
    offsets = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    dy = torch.tensor([o[0] for o in offsets])
    dx = torch.tensor([o[1] for o in offsets])
    out = shift_images(x, dy, dx)
    for i, (a, b) in enumerate(offsets):
        assert torch.equal(out[i:i + 1], _rolled(x[i:i + 1], a, b)), (a, b)
    # the random shift is shift_images with offsets in -1..1 drawn from the same seeded generator
    got = ImageAugment(max_shift=1)(x, torch.Generator().manual_seed(3))
    d = torch.randint(-1, 2, (2, 25), generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, shift_images(x, d[0], d[1])) and d.abs().max() == 1 and d.min() == -1


def test_token_dropout_and_span_masking_rates_within_a_bound():
    ids = torch.randint(1, 256, (64, 1000))
    out = TokenAugment(rate=0.1)(ids, torch.Generator().manual_seed(0))
    masked = out == 0
    assert abs(float(masked.float().mean()) - 0.1) < 0.006  # 5 sd of a binomial over 64,000 tokens
    assert torch.equal(out[~masked], ids[~masked])  # the other tokens are unchanged
    span = TokenAugment(rate=0.15, span=4)
    m = span.mask((64, 1000), torch.Generator().manual_seed(0))
    expected = 1 - (1 - 0.15 / 4) ** 4  # a token is masked when any of the 4 starts covering it fires
    assert abs(float(m[:, 3:].float().mean()) - expected) < 0.008
    runs = torch.diff(torch.cat([torch.zeros(64, 1), m.float(), torch.zeros(64, 1)], 1), dim=1)
    lengths = (runs == -1).nonzero()[:, 1] - (runs == 1).nonzero()[:, 1]  # consecutive masked stretches
    assert int(lengths.min()) >= 1 and float((lengths >= 4).float().mean()) > 0.8  # spans, not single tokens


def test_wrong_or_unknown_augmentations_are_config_errors_naming_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown augmentation 'flip'.*image-shift"):
        FitConfig(augment="flip")
    with pytest.raises(ConfigError, match=r"'tokens' is for tokens inputs but these are image.*\['image', "
                                          r"'image-heavy', 'image-shift', 'image-strong'\]"):
        resolve_augmentation("tokens", "image")
    with pytest.raises(ConfigError, match="needs integer token ids.*got torch.float32 .*image-shift"):
        resolve_augmentation("tokens", "tokens", (torch.rand(2, 1, 8, 8), torch.zeros(2)))  # declared wrongly
    with pytest.raises(ConfigError, match="'tokens' is for tokens inputs but these are image"):
        resolve_augmentation("tokens", None, (torch.rand(2, 1, 8, 8), torch.zeros(2)))  # kind read off the data
    with pytest.raises(ConfigError, match="augment='auto': the task declares no input_kind"):
        resolve_augmentation("auto", None, (torch.rand(2, 5), torch.zeros(2)))
    assert resolve_augmentation("auto", None, torch.zeros(2, 7, dtype=torch.long)) is AUGMENTATIONS.get("tokens")
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    data = [(torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))]
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    with pytest.raises(ConfigError, match="'tokens-span' is for tokens inputs but these are image"):
        fit(net, data, loss, FitConfig(steps=1, augment="tokens-span"), input_kind="image")


def test_the_training_loop_augments_reproducibly_and_keeps_targets():
    seen = []

    def loss(m, b):
        seen.append((b[0].clone(), b[1].clone()))
        return nn.functional.cross_entropy(m(b[0]), b[1])

    data = [(torch.rand(8, 1, 8, 8), torch.arange(8) % 10)]

    def run(augment, seed=0):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        seen.clear()
        fit(net, data, loss, FitConfig(steps=3, seed=seed, augment=augment), input_kind="image")
        return [x for x, _ in seen], [y for _, y in seen], net[1].weight

    xs_a, ys_a, w_a = run("auto")
    xs_b, _, w_b = run("auto")
    xs_c, _, _ = run("auto", seed=1)
    xs_n, _, _ = run(None)
    assert all(torch.equal(a, b) for a, b in zip(xs_a, xs_b)) and torch.equal(w_a, w_b)  # same seed, same run
    assert not torch.equal(xs_a[0], xs_c[0])  # another seed, other draws
    assert all(torch.equal(x, data[0][0]) for x in xs_n) and not torch.equal(xs_a[0], data[0][0])
    assert all(torch.equal(y, data[0][1]) for y in ys_a)
    assert not torch.equal(xs_a[0], xs_a[1])  # a fresh draw every step


def test_batch_augmenter_is_none_when_off_and_handles_dict_batches():
    assert batch_augmenter(None) is None
    ids = torch.randint(1, 256, (4, 50))
    out = batch_augmenter("tokens", "tokens")({"input_ids": ids, "labels": ids})
    assert torch.equal(out["labels"], ids) and not torch.equal(out["input_ids"], ids)


def test_a_resumed_run_draws_the_same_augmentations(tmp_path):
    from condense.train.api import TrainConfig
    from condense.train.trainer import run_loop

    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(8, 1, 8, 8, generator=g), torch.arange(8) % 10) for _ in range(3)]
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731

    def run(steps, out, resume=None):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        cfg = TrainConfig(steps=steps, augment="image", checkpoint_every=2, precision="fp32", tensorboard=False,
                          strategy="single")
        run_loop(net, data, loss, cfg, out=out, resume=resume, input_kind="image")
        return net[1].weight.detach()

    straight = run(4, tmp_path / "a")
    run(2, tmp_path / "b")
    resumed = run(4, tmp_path / "b", resume=tmp_path / "b")
    assert torch.equal(straight, resumed)


def test_a_fine_tuning_step_augments_with_the_tasks_declared_kind():
    from condense.core.task import Task
    from condense.core.transforms import apply_
    from condense.train.finetune import FineTuneConfig

    ids = torch.randint(1, 50, (8, 2000))
    seen = []

    def loss(m, b):
        seen.append(b[0])
        return m(b[0]).mean()

    model = nn.Embedding(50, 2)
    task = Task("toy", model, evaluate=lambda m: {"x": 0.0}, primary_metric="x", inputs=ids[:1],
                train_data=lambda: [(ids, ids)], loss=loss, input_kind="tokens")
    apply_(model, FineTuneConfig(finetune=FitConfig(steps=1, augment="auto")), task=task)
    assert abs(float((seen[0] == 0).float().mean()) - 0.1) < 0.015  # "auto" -> tokens: 10% token dropout
    with pytest.raises(ConfigError, match="'image' is for image inputs but these are tokens"):
        apply_(model, FineTuneConfig(finetune=FitConfig(steps=1, augment="image")), task=task)
