"""Open a local Hugging Face model folder offline, as data: `config.json` + safetensors, never code from the folder.

Why: a folder a user downloaded or wrote with `save_pretrained` is rebuilt from artifacts and recipes without a
trust flag, so loading it must run nothing it ships. condense never passes `trust_remote_code=True`: a config
whose architecture needs the folder's own Python (`auto_map`, or a class `transformers` does not ship) is
refused with a message, and so are pickled `pytorch_model.bin` weights (unpickling runs code).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from condense.errors import CondenseError
from condense.tasks.hf.kinds import AUTO_CLASS, KIND_HINT, Kind, infer_kind, parse_kind

INSTALL_HINT = "install it with `pip install 'condense[hf]'` (transformers)"
# files that make a tokenizer; tokenizer_config.json alone does not
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")
SAVE_HINT = "a folder written by save_pretrained holds config.json and model.safetensors"


def require_transformers() -> Any:
    """The `transformers` module, or a CondenseError saying how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise CondenseError(f"Hugging Face model folders need transformers ({e}); {INSTALL_HINT}") from None
    return transformers


@dataclass(frozen=True)
class FolderInfo:
    """What a model folder holds, checked before anything is loaded.

    Example:
        >>> info = inspect_folder("runs/my-llama")  # doctest: +SKIP
        >>> info.architecture, info.kind.value
        ('LlamaForCausalLM', 'causal-lm')
    """

    path: str  # absolute
    architecture: str
    kind: Kind
    model_type: str
    vocab_size: int
    max_positions: int | None
    has_tokenizer: bool


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CondenseError(f"cannot read {what} {path} ({type(e).__name__}: {e}); fix the file or write the folder "
                            "again with save_pretrained") from None
    if not isinstance(data, dict):
        raise CondenseError(f"{what} {path} is not a JSON object; write the folder again with save_pretrained")
    return data


def _refuse_remote_code(cfg: dict[str, Any], where: Path) -> None:
    if cfg.get("auto_map"):
        raise CondenseError(f"{where} maps its model to code shipped in the folder (auto_map: "
                            f"{json.dumps(cfg['auto_map'])[:120]}); condense loads model folders as data and never "
                            "runs their code (no trust_remote_code): use an architecture transformers ships, or "
                            "wrap the model in your own task (--task my_module:make_task)")


def inspect_folder(path: str | Path, kind: str | Kind | None = None) -> FolderInfo:
    """Check `path` is a Hugging Face model folder condense can load as data, and say what it is.

    Args:
        kind: "causal-lm", "classifier" or "encoder"; default: inferred from `architectures` in config.json.
    """
    p = Path(path).expanduser()
    if not str(path).strip() or not p.is_dir():
        raise CondenseError(f"no Hugging Face model folder at {str(path)!r}; give the folder with --task hf:PATH "
                            f"({SAVE_HINT})")
    p = p.resolve()
    if not (p / "config.json").is_file():
        raise CondenseError(f"{p} has no config.json, so it is not a Hugging Face model folder; {SAVE_HINT}")
    cfg = _read_json(p / "config.json", "config")
    _refuse_remote_code(cfg, p / "config.json")
    transformers = require_transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = cfg.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise CondenseError(f"{p}/config.json has model_type {model_type!r}, which transformers "
                            f"{transformers.__version__} does not ship (it would need the folder's own code, "
                            "which condense never runs); upgrade transformers or use a supported architecture")
    if cfg.get("is_encoder_decoder"):
        raise CondenseError(f"{p} holds an encoder-decoder model ({model_type}); condense's hf: tasks cover causal "
                            "LMs, sequence classifiers and encoders: wrap it in your own task instead")
    archs = cfg.get("architectures")
    if not (isinstance(archs, list) and archs and all(isinstance(a, str) and a for a in archs)):
        if parse_kind(kind) is None:
            raise CondenseError(f"{p}/config.json names no architectures, so the task kind is unknown; {KIND_HINT}")
        archs = [AUTO_CLASS[parse_kind(kind)]]
    arch = archs[0]
    if not arch.startswith("Auto") and getattr(transformers, arch, None) is None:
        raise CondenseError(f"{p}/config.json names the architecture {arch!r}, which transformers "
                            f"{transformers.__version__} does not ship (it would need code condense never runs); "
                            "upgrade transformers or use a supported architecture")
    chosen = parse_kind(kind) or infer_kind(arch)
    if chosen is None:
        raise CondenseError(f"cannot tell what kind of task the architecture {arch!r} is; {KIND_HINT}")
    if not any(p.glob("*.safetensors")):
        pickled = sorted(x.name for x in p.glob("*.bin"))
        if pickled:
            raise CondenseError(f"{p} holds pickled weights ({', '.join(pickled)}), which condense does not load "
                                "(unpickling runs code); convert them: load the model once yourself and call "
                                "save_pretrained, which writes model.safetensors")
        raise CondenseError(f"{p} has no *.safetensors weights; {SAVE_HINT}")
    vocab = cfg.get("vocab_size")
    if not isinstance(vocab, int) or vocab < 1:
        text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
        vocab = text.get("vocab_size")
    if not isinstance(vocab, int) or vocab < 1:
        raise CondenseError(f"{p}/config.json gives no vocab_size; condense needs it to make token ids")
    positions = next((cfg[k] for k in ("max_position_embeddings", "n_positions", "n_ctx")
                      if isinstance(cfg.get(k), int) and cfg[k] > 0), None)
    has_tok = any((p / f).is_file() for f in TOKENIZER_FILES)
    return FolderInfo(path=str(p), architecture=arch, kind=chosen, model_type=model_type, vocab_size=vocab,
                      max_positions=positions, has_tokenizer=has_tok)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' "Loading weights" bars say nothing useful for a local folder of a few files."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def model_class(info: FolderInfo) -> Any:
    """The transformers class that loads `info` as its kind: the config's own class when it is of that kind."""
    transformers = require_transformers()
    if infer_kind(info.architecture) is info.kind and not info.architecture.endswith("ForMaskedLM") \
            and not info.architecture.startswith("Auto"):
        return getattr(transformers, info.architecture)
    return getattr(transformers, AUTO_CLASS[info.kind])


def load_model(info: FolderInfo, pad_id: int | None = None) -> nn.Module:
    """The folder's model in float32 on CPU, eval mode, loaded offline from its safetensors (no code run).

    A classifier whose config has no `pad_token_id` gets `pad_id` (what batches are padded with): transformers'
    decoder classifiers find each row's last token by it and refuse batches of more than one row without it.
    """
    cls = model_class(info)
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True, "dtype": torch.float32}
    if cls.__name__.startswith("Auto"):
        kwargs["trust_remote_code"] = False
    try:
        # layers the folder lacks (the pooler of a *ForMaskedLM folder's base model) start the same on every build
        with _no_progress_bars(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = cls.from_pretrained(info.path, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CondenseError(f"cannot load the model in {info.path} as {cls.__name__} ({type(e).__name__}: "
                            f"{str(e)[:300]}); check the folder was written by save_pretrained") from None
    if info.kind is Kind.CLASSIFIER and pad_id is not None and getattr(model.config, "pad_token_id", 0) is None:
        model.config.pad_token_id = pad_id
    return model.eval()


def load_tokenizer(info: FolderInfo) -> Any:
    """The folder's own tokenizer (offline, no code run)."""
    p = Path(info.path)
    if (p / "tokenizer_config.json").is_file():
        _refuse_remote_code(_read_json(p / "tokenizer_config.json", "tokenizer config"), p / "tokenizer_config.json")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(info.path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, ImportError) as e:
        raise CondenseError(f"cannot load the tokenizer in {info.path} ({type(e).__name__}: {str(e)[:300]}); fix "
                            "it, or use byte ids instead: --task-option tokenizer=bytes") from None
