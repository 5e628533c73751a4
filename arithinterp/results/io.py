"""Atomic file and directory writes, and conversion of values to plain JSON.

Everything arithinterp writes to disk (results, run steps, reports) goes
through these helpers so that a crash or an exception midway never leaves a
half-written file or directory where a complete one is expected: the new
content is built beside the target (same parent, hence same filesystem) and
renamed onto it in one step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from arithinterp.errors import OutputError

__all__ = [
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_replaceable",
    "is_ours",
    "to_jsonable",
]

# mkstemp/mkdtemp create private (0600/0700) entries; a report or result is
# meant to be readable like any other file the user writes.
_FILE_MODE = 0o644
_DIR_MODE = 0o755


def _fsync_path(path: Path) -> None:
    """Flush a file or directory to disk; best effort where unsupported."""
    flags = os.O_RDONLY
    if path.is_dir():
        flags |= getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o777 if target.is_file() else _FILE_MODE
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_path(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same directory, then rename)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON (see :func:`to_jsonable`) to ``path`` atomically."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


#: Files that mark a directory as one arithinterp wrote (each group: all of its files present):
#: a result, an attribution report, a pipeline step, a tuned lens.
OWN_MARKERS: tuple[tuple[str, ...], ...] = (
    ("result.json", "meta.json"),
    ("summary.json", "report.html"),
    ("step.json",),
    ("tuned_lens.json", "translators.safetensors"),
)


def is_ours(path: str | os.PathLike[str]) -> bool:
    """Whether directory ``path`` is one arithinterp wrote (see :data:`OWN_MARKERS`)."""
    folder = Path(path)
    return any(all((folder / name).is_file() for name in group) for group in OWN_MARKERS)


def check_replaceable(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Refuse, with :class:`~arithinterp.errors.OutputError`, to replace ``path`` unless it is
    absent, an empty directory, a directory arithinterp wrote, or ``overwrite=True``.

    Replacing a directory deletes what it held, so a user's own files (a thesis, raw data)
    are never replaced by accident. A file (not a directory) is never replaced.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target} exists and is not a directory; refusing to replace it")
    if not target.exists() or overwrite or is_ours(target):
        return target
    try:
        entries = sorted(p.name for p in target.iterdir())
    except OSError as err:
        raise OutputError(f"{target} cannot be listed ({err.strerror}); choose another directory") from None
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise OutputError(
            f"{target} is not empty ({len(entries)} entries: {shown}) and is not a result or "
            "report arithinterp wrote; saving would delete its contents. Choose a new or empty "
            "directory, or pass overwrite=True to replace it"
        )
    return target


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary place and move it onto ``path`` on success.

    Yields an empty temporary directory beside ``path``. When the block exits
    normally it replaces ``path``: an existing directory there is moved aside,
    the new one renamed in, and only then is the old one deleted, so at every
    moment ``path`` holds either the complete old or the complete new content.
    When the block raises, the temporary directory is removed and ``path`` is
    untouched. An existing ``path`` is replaced only when it is empty or one
    arithinterp wrote, or with ``overwrite=True`` (:func:`check_replaceable`),
    and that is checked before the block runs.
    """
    target = check_replaceable(path, overwrite=overwrite)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as err:
        raise OutputError(f"cannot write into {target.parent}: {err.strerror or err}") from None
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for name in files:
                _fsync_path(Path(root, name))
        os.chmod(tmp, _DIR_MODE)
        _move_onto(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_path(target.parent)


def _move_onto(src: Path, target: Path) -> None:
    """Rename directory ``src`` onto ``target``, replacing an existing directory."""
    if not target.exists():
        os.replace(src, target)
        return
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
    os.replace(target, aside)
    try:
        os.replace(src, target)
    except BaseException:
        os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` into plain JSON types (dict with str keys, list, str, int, float, bool, None).

    Understands numpy scalars and arrays, pandas frames and series (as lists
    of records / lists), enums (their value), paths, dataclasses, pydantic
    models (``model_dump(mode="json")``), sets (sorted) and tuples (lists).
    Non-finite floats become ``None`` so the output is strict JSON.
    Raises ``TypeError`` naming the offending type for anything else.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {_json_key(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        if callable(to_dict):
            return to_jsonable(to_dict())
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    model_dump = getattr(obj, "model_dump", None)
    if callable(model_dump):  # pydantic v2 model, without importing pydantic
        return to_jsonable(model_dump(mode="json"))
    if type(obj).__module__.startswith("pandas"):
        if hasattr(obj, "columns"):
            return to_jsonable(obj.to_dict(orient="records"))
        if hasattr(obj, "tolist"):
            return to_jsonable(obj.tolist())
    raise TypeError(f"cannot convert {type(obj).__qualname__} to JSON: {obj!r:.80}")


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, enum.Enum):
        return str(key.value)
    if isinstance(key, (bool, int, float, np.generic)) or key is None:
        return json.dumps(to_jsonable(key))
    raise TypeError(f"cannot use {type(key).__qualname__} as a JSON object key: {key!r:.80}")
