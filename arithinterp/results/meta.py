"""``ResultMeta``: everything that can change the numbers of a result."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np

from arithinterp.errors import ResultError
from arithinterp.results.io import to_jsonable

__all__ = ["ResultMeta", "package_version", "stable_hash"]


def package_version() -> str:
    """The installed arithinterp version, or ``"0+unknown"`` when not installed."""
    try:
        return importlib.metadata.version("arithinterp")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


#: The libraries whose versions a run or report records.
RECORDED_PACKAGES = ("arithinterp", "torch", "transformer_lens", "nnsight", "transformers", "numpy",
                     "pandas", "xarray", "plotly")


def library_versions() -> dict[str, str]:
    """Python's and :data:`RECORDED_PACKAGES`' installed versions (``"not installed"`` if absent)."""
    import platform

    out = {"python": platform.python_version()}
    for pkg in RECORDED_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stable_hash(obj: Any, *, length: int = 16) -> str:
    """A short sha256 hex digest of ``obj``'s canonical JSON (sorted keys).

    Equal inputs give equal hashes across runs and machines, so it is fit for
    ``ResultMeta.dataset_hash`` (hash the prompts and their annotations).
    """
    canonical = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResultMeta:
    """Provenance of a result: what produced it and with which settings.

    ``options`` holds the method's keyword options and ``extra`` anything else
    worth keeping (timings, notes). Both are normalised to plain JSON on
    construction (tuples become lists, enums their values, non-finite floats
    ``None``), so a meta object equals itself after a JSON round trip.
    Empty strings mean "not applicable" (e.g. ``model`` of a synthetic result).
    """

    method: str
    model: str = ""
    backend: str = ""
    dtype: str = ""
    dataset_hash: str | None = None
    seed: int | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    package_version: str = dataclasses.field(default_factory=package_version)
    created: str = dataclasses.field(default_factory=_now_iso)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("method", "model", "backend", "dtype", "package_version", "created"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ResultError(f"ResultMeta.{name} must be a str, got {type(value).__name__}")
        if not self.method:
            raise ResultError("ResultMeta.method must name the method that produced the result")
        if self.dataset_hash is not None and not isinstance(self.dataset_hash, str):
            raise ResultError("ResultMeta.dataset_hash must be a str or None")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
                raise ResultError(f"ResultMeta.seed must be an int or None, got {self.seed!r}")
            object.__setattr__(self, "seed", int(self.seed))
        for name in ("options", "extra"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ResultError(
                    f"ResultMeta.{name} must be a mapping, got {type(value).__name__}"
                )
            try:
                object.__setattr__(self, name, to_jsonable(dict(value)))
            except TypeError as err:
                raise ResultError(f"ResultMeta.{name} must be JSON-serialisable: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of all fields."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultMeta:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ``ResultError``."""
        if not isinstance(data, Mapping):
            raise ResultError(f"result meta must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ResultError(f"unknown result meta keys {unknown}; valid keys: {sorted(known)}")
        if "method" not in data:
            raise ResultError("result meta lacks the required key 'method'")
        return cls(**data)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ResultMeta:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ResultError(f"result meta is not valid JSON: {err}") from err
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> ResultMeta:
        """A copy with some fields changed (``options``/``extra`` replaced, not merged)."""
        return dataclasses.replace(self, **changes)
