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

from condense.tasks.hf.task import PREFIX, make_task
from condense.tasks.hf.writeback import save_hf, why_not_hf

__all__ = ["PREFIX", "make_task", "save_hf", "why_not_hf"]  # condense.hf_task is condense.tasks.hf_task
