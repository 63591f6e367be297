"""Your own Hugging Face model as a task: `--task hf:PATH` / `condense.hf_task(PATH)` for a local model folder.

The folder is data (config.json + safetensors, loaded offline with `transformers`, never with its own code), so a
recorded `hf:` spec in an artifact or recipe rebuilds the model without `--trust-task`. The task's kind comes
from the config's `architectures`: causal LMs are scored in bits per byte on held-out standard-library text and
timed decoding through their own `generate`; encoders and classifiers are scored by agreement with the original
model. `save_hf` writes a result back as a folder `from_pretrained` opens, where its config can express it.

Example:
    >>> import condense
    >>> task = condense.hf_task("runs/my-llama")  # doctest: +SKIP
    >>> condense.measure(task.build_model(), task)  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

from condense.core.task import Task
from condense.tasks.hf.task import PREFIX, make_task
from condense.tasks.hf.writeback import save_hf, why_not_hf

__all__ = ["PREFIX", "hf_task", "make_task", "save_hf", "why_not_hf"]


def hf_task(path: str, **options: Any) -> Task:
    """The task for the Hugging Face model folder `path`; `options` as `make_task` takes them (kind, seq_len, ...).

    Example:
        >>> task = hf_task("runs/my-bert", eval_texts=32)  # doctest: +SKIP
        >>> task.primary_metric
        'embedding_cosine'
    """
    from condense.tasks import get_task

    return get_task(PREFIX + str(path), **options)
