"""Semi-supervised training: the label subset, the masked consistency loss, the data pairing, the config, and a
short semi-supervised run through `train`; whether it beats labelled-only training is measured by
bench/bench_data_efficiency.py (a short run is too noisy to assert)."""
import math

import pytest
import torch
import torch.nn.functional as F

from condense.core.config import config_from_dict
from condense.data.digits import digits_split, labelled_subset
from condense.errors import ConfigError
from condense.tasks import get_task
from condense.train.augment import AUGMENTATIONS
from condense.train.api import TrainConfig, train
from condense.train.semi import (DistributionAlignment, SemiBatch, SemiConfig, consistency_loss, semi_batches,
                                 semi_task)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_labels_fraction_and_per_class_keep_exactly_the_stated_count_per_class():
    y = digits_split().y_train
    counts = torch.bincount(y)
    keep = labelled_subset(y, per_class=3, seed=0)
    assert torch.bincount(y[keep]).tolist() == [3] * 10
    keep = labelled_subset(y, fraction=0.05, seed=0)
    assert torch.bincount(y[keep]).tolist() == [max(1, round(0.05 * int(n))) for n in counts]
    assert torch.equal(keep, labelled_subset(y, fraction=0.05, seed=0))  # fixed under a seed
    assert not torch.equal(keep, labelled_subset(y, fraction=0.05, seed=1))
    with pytest.raises(ConfigError, match="exactly one of"):
        labelled_subset(y, fraction=0.1, per_class=2)


def test_digits_task_trains_on_the_labelled_subset_and_holds_out_the_rest():
    data = digits_split()
    task = get_task("digits", labels_per_class=4)
    keep = set(labelled_subset(data.y_train, per_class=4).tolist())
    batches = list(task.train_data())
    assert len(batches) == 23 and all(x.shape[0] == 40 for x, _ in batches)  # as many batches as the full set
    index = {tuple(x.flatten().tolist()): i for i, x in enumerate(data.x_train)}
    used = {index[tuple(x.flatten().tolist())] for xb, _ in batches for x in xb}
    assert used == keep  # every labelled image, and only those
    unlabelled = {index[tuple(x.flatten().tolist())] for xb in task.unlabelled_data() for x in xb}
    assert not unlabelled & keep and len(unlabelled) == (data.x_train.shape[0] - 40) // 64 * 64
    assert get_task("digits").unlabelled_data is None
    with pytest.raises(ConfigError, match="labels_fraction must be in"):
        get_task("digits", labels_fraction=1.5)


def test_consistency_loss_masks_exactly_the_samples_below_threshold():
    probs = torch.tensor([[0.96, 0.02, 0.02],    # confident -> class 0
                          [0.50, 0.25, 0.25],    # below -> masked out
                          [0.05, 0.05, 0.90],    # exactly at the threshold -> kept, class 2
                          [0.10, 0.85, 0.05]])   # below
    target = probs.log()
    logits = torch.randn(4, 3)
    loss, mask = consistency_loss(target, logits, threshold=0.90)
    assert mask.tolist() == [True, False, True, False]
    ref = (F.cross_entropy(logits[0:1], torch.tensor([0])) + F.cross_entropy(logits[2:3], torch.tensor([2]))) / 4
    assert torch.allclose(loss, ref, atol=1e-6)
    logits.requires_grad_(True)
    loss, _ = consistency_loss(logits, logits, 0.0)  # targets carry no gradient: only the prediction side does
    (g,) = torch.autograd.grad(loss, logits)
    ref = (logits.softmax(-1) - F.one_hot(logits.argmax(-1), 3)) / 4
    assert torch.allclose(g, ref.detach(), atol=1e-6)


def test_semi_batches_pair_mu_unlabelled_batches_and_restart():
    lab = lambda: [(torch.full((2, 1), float(i)), torch.zeros(2)) for i in range(3)]  # noqa: E731
    unl = lambda: [torch.full((2, 1), 10.0 + j) for j in range(4)]  # noqa: E731
    out = list(semi_batches(lab, unl, mu=3)())
    assert len(out) == 3 and all(isinstance(b, SemiBatch) and b.unlabelled.shape == (6, 1) for b in out)
    assert [b.unlabelled[::2].flatten().tolist() for b in out] == [[10, 11, 12], [13, 10, 11], [12, 13, 10]]
    with pytest.raises(ConfigError, match="unlabelled data yielded no batches"):
        list(semi_batches(lab, lambda: [], mu=1)())


def test_semi_loss_is_supervised_plus_weighted_unlabelled_loss():
    task = get_task("digits", channels=[4, 4, 8], labels_per_class=2)
    model = task.build_skeleton().eval()  # eval: batch norm does not move between the calls compared
    cfg = SemiConfig(method="pseudo-label", threshold=0.0, lambda_u=0.5, weak="image-shift", align=0)
    st = semi_task(task, cfg)
    batch = next(iter(st.train_data()))
    torch.manual_seed(3)
    got = st.loss(model, batch)
    torch.manual_seed(3)
    logits = model(AUGMENTATIONS.get("image-shift")(batch.unlabelled))
    ref = task.loss(model, batch.labelled) + 0.5 * F.cross_entropy(logits, logits.argmax(-1))
    assert torch.allclose(got, ref, atol=1e-5) and st.loss.mask_rates == [1.0]


def test_config_round_trip_shorthand_and_errors():
    cfg = TrainConfig(semi="pseudo-label")
    assert cfg.semi == SemiConfig(method="pseudo-label")
    assert config_from_dict(cfg.to_dict()) == cfg
    assert TrainConfig(semi={"threshold": 0.8}).semi.threshold == 0.8
    with pytest.raises(ConfigError, match="unknown method 'mixmatch'; choose one of"):
        SemiConfig(method="mixmatch")
    with pytest.raises(ConfigError, match="SemiConfig.strong: unknown augmentation 'cutmix'"):
        SemiConfig(strong="cutmix")
    with pytest.raises(ConfigError, match="labels_fraction=0.05"):
        train(get_task("digits"), TrainConfig(steps=1, semi="fixmatch", tensorboard=False))


def test_train_runs_semi_supervised_through_the_engine():
    task = get_task("digits", channels=[4, 4, 8], labels_per_class=3)
    model, result = train(task, TrainConfig(steps=3, semi=SemiConfig(mu=2, threshold=0.0), precision="fp32",
                                            tensorboard=False, augment="auto"))
    assert result.steps == 3 and result.samples == 3 * 30 and all(math.isfinite(x) for x in result.losses)


def test_ramp_steps_raise_the_unlabelled_weight_linearly_to_lambda_u():
    from types import SimpleNamespace

    from condense.train.semi import SemiLoss

    task = SimpleNamespace(loss=lambda model, b: torch.tensor(0.5), run_batch=None, name="t")
    loss = SemiLoss(task, SemiConfig(lambda_u=2.0, ramp_steps=4))
    loss.views = (lambda x: x, lambda x: x)
    loss.method = lambda run, x, weak, strong, tau, align: (torch.tensor(1.0), torch.ones(2, dtype=torch.bool))
    batch = SemiBatch((torch.zeros(1), torch.zeros(1)), torch.zeros(2))
    assert [float(loss(None, batch)) for _ in range(5)] == [1.0, 1.5, 2.0, 2.5, 2.5]  # 0.5 + 2 x min(1, k/4)


def test_validation_split_is_carved_from_training_images_and_never_touches_the_test_split():
    full, val = digits_split(), digits_split(validation=0.2)
    key = lambda x: {tuple(r.flatten().tolist()) for r in x}  # noqa: E731
    train, held, test = key(val.x_train), key(val.x_test), key(full.x_test)
    assert len(val.y_test) == math.ceil(0.2 * len(full.y_train)) and not held & test and not held & train
    assert train | held == key(full.x_train)
    task = get_task("digits", validation=0.2, labels_fraction=0.05)
    seen = {tuple(r.flatten().tolist()) for xb, _ in task.train_data() for r in xb}
    seen |= {tuple(r.flatten().tolist()) for xb in task.unlabelled_data() for r in xb}
    assert not seen & held and not seen & test
    with pytest.raises(ConfigError, match="validation must be a fraction"):
        get_task("digits", validation=1.5)


def test_distribution_alignment_divides_by_the_mean_of_the_last_window_batches():
    da = DistributionAlignment(window=2)
    p1 = torch.tensor([[0.6, 0.4], [0.8, 0.2]])  # batch mean (0.7, 0.3)
    p2 = torch.tensor([[0.1, 0.9], [0.3, 0.7]])  # batch mean (0.2, 0.8)
    p3 = torch.tensor([[0.5, 0.5], [0.5, 0.5]])  # batch mean (0.5, 0.5)
    hand = lambda p, m: (p / m) / (p / m).sum(-1, keepdim=True)  # noqa: E731
    assert torch.allclose(da(p1.log()).softmax(-1), hand(p1, torch.tensor([0.7, 0.3])), atol=1e-6)
    assert torch.allclose(da(p2.log()).softmax(-1), hand(p2, torch.tensor([0.45, 0.55])), atol=1e-6)
    got = da(p3.log()).softmax(-1)  # window 2: p1's batch has left, m = mean of (0.2, 0.8) and (0.5, 0.5)
    assert torch.allclose(got, hand(p3, torch.tensor([0.35, 0.65])), atol=1e-6) and len(da.history) == 2
    assert torch.allclose(got[0], torch.tensor([0.65, 0.35]), atol=1e-6)  # (1/0.35, 1/0.65) renormalised
    # wired into a method: pseudo-labels from p / m, m = (0.775, 0.225) -> rows (0.3034, 0.6966), (0.8465, 0.1535)
    from types import SimpleNamespace

    from condense.train.semi import SemiLoss

    skew = torch.tensor([[0.6, 0.4], [0.95, 0.05]]).log()
    plain = SemiLoss(SimpleNamespace(name="t"), SemiConfig(method="pseudo-label", align=0))
    aligned = SemiLoss(SimpleNamespace(name="t"), SemiConfig(method="pseudo-label", align=4))
    ident = lambda x: x  # noqa: E731
    _, mask = plain.method(ident, skew, ident, ident, 0.69, align=plain.align)
    assert mask.tolist() == [False, True]
    loss, mask = aligned.method(ident, skew, ident, ident, 0.69, align=aligned.align)
    ref = (F.cross_entropy(skew[:1], torch.tensor([1])) + F.cross_entropy(skew[1:], torch.tensor([0]))) / 2
    assert mask.tolist() == [True, True] and torch.allclose(loss, ref, atol=1e-6)
    with pytest.raises(ConfigError, match="align"):
        SemiConfig(align=-1)
