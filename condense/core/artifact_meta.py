"""Reading an artifact's `condense.json`: every field `load` and the CLI read is checked before use."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from condense.core.artifact_files import META_FILE
from condense.errors import ArtifactError

FORMAT = "condense.artifact"
FORMAT_VERSION = 2  # 2 added encoded tensors; an artifact without any is still written as version 1


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed `condense.json` of an artifact, with clear errors for a missing or corrupt one."""
    path = Path(path)
    meta_path = path / META_FILE
    try:
        text = meta_path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        hint = "the folder does not exist" if not path.exists() else f"it has no {META_FILE}"
        raise ArtifactError(f"no condense artifact at {path} ({hint}); create one with condense.save(model, path) "
                            "or `condense demo`, and check the path") from None
    except UnicodeDecodeError as e:
        raise ArtifactError(f"artifact metadata {meta_path} is corrupt ({e}); re-create the artifact") from None
    except (OSError, ValueError) as e:  # a folder named condense.json, no permission, a NUL in the path
        raise ArtifactError(f"artifact metadata {meta_path} cannot be read ({type(e).__name__}: {e}); "
                            f"{META_FILE} must be a readable file: re-create the artifact") from None
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:  # bad JSON, an integer of thousands of digits, nesting 1000s deep
        raise ArtifactError(f"artifact metadata {meta_path} is corrupt ({type(e).__name__}: {e}); "
                            "re-create the artifact") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path} is not condense artifact metadata; re-create the artifact")
    _check_metadata(meta, meta_path)
    return meta


META_MAX_DEPTH = 64  # nesting levels condense.json may have; saved artifacts use under 10


def _check_metadata(meta: dict[str, Any], meta_path: Path) -> None:
    """Every field `load` and the CLI read has the type `save` writes; an error names the field and the fix."""
    from condense.core.validate import nesting_depth

    def bad(field: str, want: str) -> ArtifactError:
        got = meta.get(field) if "[" not in field and "." not in field else None
        shown = f", got {json.dumps(got)[:80]}" if got is not None else ""
        return ArtifactError(f"{meta_path}: {field} must be {want}{shown}; the metadata was edited or damaged: "
                             "re-create the artifact")

    if nesting_depth(meta, limit=META_MAX_DEPTH) > META_MAX_DEPTH:  # `meta` comes from json.loads: no cycles
        raise ArtifactError(f"{meta_path} is nested more than {META_MAX_DEPTH} levels deep; the metadata was edited "
                            "or damaged: re-create the artifact")
    version = meta.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise bad("format_version", "a positive integer")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"artifact format {version} is newer than this condense supports "
                            f"({FORMAT_VERSION}); upgrade condense")
    for field in ("weights_file", "weights_sha256"):
        if not isinstance(meta.get(field), str) or not meta[field]:
            raise bad(field, "a non-empty string")
    aliases = meta.get("aliases", {})
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise bad("aliases", "a mapping of tensor name to tensor name")
    encoded = meta.get("encoded", {})
    if not isinstance(encoded, dict):
        raise bad("encoded", "a mapping of tensor name to {encoding, shape}")
    for name, info in encoded.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if (not isinstance(info, dict) or not isinstance(info.get("encoding"), str) or not isinstance(shape, list)
                or len(shape) > 16
                or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**40 for n in shape)):
            raise bad(f"encoded[{name!r}]", 'a mapping {"encoding": NAME, "shape": [sizes]}')
    task = meta.get("task")
    if task is not None:
        if not isinstance(task, dict) or not isinstance(task.get("options", {}), dict) or not any(
                isinstance(task.get(k), str) and task[k] for k in ("name", "factory")):
            raise bad("task", 'null or a mapping {"name" or "factory": TEXT, "options": {...}}')
        if not all(isinstance(k, str) for k in task.get("options", {})):
            raise bad("task.options", "a mapping with text keys")
    transforms = meta.get("transforms", [])
    if not isinstance(transforms, list):
        raise bad("transforms", "a list of {config, details}")
    for i, t in enumerate(transforms):
        if (not isinstance(t, dict) or not isinstance(t.get("config"), dict)
                or not isinstance(t["config"].get("type"), str) or not isinstance(t.get("details", {}), dict)):
            raise bad(f"transforms[{i}]", 'a mapping {"config": {"type": NAME, ...}, "details": {...}}')
    for field in ("measurements", "metadata"):
        if not isinstance(meta.get(field), (dict, type(None))):
            raise bad(field, "a mapping or null")
