"""The ``Result`` base class every analysis returns.

A result is a frozen dataclass holding one labeled array (``values``), the
provenance of its numbers (``meta``) and optional auxiliary arrays on the
same axes (``extras``, e.g. confidence bounds). It turns into a tidy frame,
a plotly figure, a ranked table, and a directory on disk that loads back
into the same class without pickle.

Writing a new result class::

    @resultclass
    class PatchingResult(Result):
        metric_name: ClassVar[str] = "logit_diff_recovered"
        clean_logit_diff: float = 0.0     # extra fields must be plain JSON

        @classmethod
        def example(cls) -> "PatchingResult": ...

Every subclass is registered by class name when it is defined, so
``Result.load(dir)`` returns an instance of the class that saved ``dir``.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import xarray as xr

from arithinterp.errors import ResultError
from arithinterp.results.frame import dim_labels, tidy_frame
from arithinterp.results.io import atomic_dir
from arithinterp.results.meta import ResultMeta
from arithinterp.results.plotting import frame_figure
from arithinterp.results.serialize import COORDS_FILE, VALUES_FILE, read_array, write_array

__all__ = [
    "AXES",
    "FORMAT_VERSION",
    "Result",
    "registered_result_classes",
    "result_class",
    "resultclass",
]

#: The one axis vocabulary: every dim of every result is one of these.
AXES: tuple[str, ...] = (
    "prompt", "layer", "head", "pos", "neuron", "component", "freq", "digit",
    "token", "target", "metric", "stat", "site", "class", "checkpoint", "fraction",
)  # fmt: skip

FORMAT_VERSION = 1
FORMAT_NAME = "arithinterp.result"
RESULT_FILE = "result.json"
META_FILE = "meta.json"
EXTRAS_DIR = "extras"
_BASE_FIELDS = ("values", "meta", "extras")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

TopBy = Literal["abs", "value", "-value"]
R = TypeVar("R", bound="Result")

_REGISTRY: dict[str, type[Result]] = {}


def _register(cls: type[Result]) -> None:
    name = cls.__name__
    known = _REGISTRY.get(name)
    if known is not None and (known.__module__, known.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise TypeError(
            f"a Result class named {name!r} is already registered from {known.__module__}; "
            "result classes are saved by name, so give this one another name"
        )
    _REGISTRY[name] = cls


def registered_result_classes() -> list[type[Result]]:
    """Every registered result class (``Result`` itself first), in definition order."""
    return list(_REGISTRY.values())


def result_class(name: str) -> type[Result]:
    """The registered result class called ``name``; ``ResultError`` listing the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ResultError(
            f"unknown result class {name!r}; registered: {sorted(_REGISTRY)}. "
            "Import the module that defines it before loading."
        ) from None


def resultclass(cls: type[R]) -> type[R]:
    """Decorator for result subclasses that add fields: a frozen, keyword-only dataclass
    that keeps ``Result``'s array-aware ``__eq__`` and short ``__repr__`` instead of
    the generated ones (a plain ``@dataclass`` would replace both)."""
    return dataclasses.dataclass(frozen=True, eq=False, repr=False, kw_only=True)(cls)


def _check_json_native(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_json_native(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ResultError(f"{where} has a non-str key {k!r}; only plain JSON can be saved")
            _check_json_native(v, f"{where}[{k!r}]")
        return
    raise ResultError(
        f"{where} is a {type(value).__name__}; extra result fields must be plain JSON "
        "(None, bool, int, float, str, list, dict) — put arrays in `extras`"
    )


class ReadOnlyMapping(Mapping[str, xr.DataArray]):
    """The ``extras`` of a result: a mapping that cannot be changed in place
    (unlike ``types.MappingProxyType`` it can be deep-copied and pickled)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, xr.DataArray]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> xr.DataArray:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, xr.DataArray) or isinstance(b, xr.DataArray):
        return isinstance(a, xr.DataArray) and isinstance(b, xr.DataArray) and a.identical(b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class Result:
    """Labeled values plus provenance; the base of every analysis result.

    ``values`` dims must come from :data:`AXES`; coordinates carry labels
    (token strings on ``pos`` as the non-index coordinate ``pos_token``).
    ``extras`` are auxiliary arrays whose dims are a subset of ``values``'
    dims with the same labels (``ci_low``/``ci_high``, ``n``...). The class
    attribute ``metric_name`` says what ``values`` measures.
    """

    values: xr.DataArray
    meta: ResultMeta
    extras: Mapping[str, xr.DataArray] = dataclasses.field(default_factory=dict)

    metric_name: ClassVar[str] = "value"

    def __init_subclass__(cls, *, register: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if register:
            _register(cls)

    # -- validation -------------------------------------------------------------------------

    def __post_init__(self) -> None:
        values = self.values
        if not isinstance(values, xr.DataArray):
            raise ResultError(f"values must be an xarray.DataArray, got {type(values).__name__}")
        bad = [d for d in values.dims if d not in AXES]
        if bad:
            raise ResultError(
                f"{type(self).__name__} has dims {bad} outside the axis vocabulary; "
                f"valid dims: {list(AXES)}"
            )
        if isinstance(self.meta, Mapping):
            object.__setattr__(self, "meta", ResultMeta.from_dict(self.meta))
        elif not isinstance(self.meta, ResultMeta):
            raise ResultError(f"meta must be a ResultMeta, got {type(self.meta).__name__}")
        if not isinstance(self.extras, Mapping):
            raise ResultError(
                f"extras must be a mapping of name -> DataArray, got {self.extras!r:.60}"
            )
        for name, extra in self.extras.items():
            self._check_extra(name, extra)
        object.__setattr__(self, "extras", ReadOnlyMapping(self.extras))
        columns = [*map(str, values.dims), *(str(c) for c in values.coords if c not in values.dims)]
        columns += [self.metric, *self.extras]
        clashes = sorted({c for c in columns if columns.count(c) > 1})
        if clashes:
            raise ResultError(
                f"{type(self).__name__}: names {clashes} are used by more than one of dims, "
                f"coordinates, the metric {self.metric!r} and extras; rename them"
            )

    def _check_extra(self, name: Any, extra: Any) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ResultError(f"extra name {name!r} must be an identifier (letters, digits, _)")
        if not isinstance(extra, xr.DataArray):
            raise ResultError(
                f"extra {name!r} must be an xarray.DataArray, got {type(extra).__name__}"
            )
        outside = [d for d in extra.dims if d not in self.values.dims]
        if outside:
            raise ResultError(
                f"extra {name!r} has dims {outside} that values lacks; extras use a subset "
                f"of values' dims {list(self.values.dims)}"
            )
        for dim in extra.dims:
            if extra.sizes[dim] != self.values.sizes[dim]:
                raise ResultError(
                    f"extra {name!r} has {extra.sizes[dim]} {dim!r} entries, values has "
                    f"{self.values.sizes[dim]}"
                )
            if (dim in extra.indexes or dim in self.values.indexes) and not np.array_equal(
                dim_labels(extra, dim), dim_labels(self.values, dim)
            ):
                raise ResultError(f"extra {name!r} labels dim {dim!r} differently from values")

    # -- basic views ------------------------------------------------------------------------

    @property
    def metric(self) -> str:
        """The name of what ``values`` measures (the value column of :meth:`to_frame`)."""
        return type(self).metric_name

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(str(d) for d in self.values.dims)

    @property
    def sizes(self) -> dict[str, int]:
        return {str(d): int(n) for d, n in self.values.sizes.items()}

    def sel(self, indexers: Mapping[str, Any] | None = None, **kwargs: Any) -> xr.DataArray:
        """``values.sel(...)``; pass ``indexers={"class": ...}`` for dims that are keywords."""
        return self.values.sel(indexers, **kwargs)

    def replace(self: R, **changes: Any) -> R:
        """A copy with some fields replaced (results are frozen)."""
        return dataclasses.replace(self, **changes)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(
            _same(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays and dicts

    # -- tidy frame, plot, ranking ----------------------------------------------------------

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame, one row per cell: dims, non-index coords, the metric, then extras."""
        return tidy_frame(self.values, self.metric, self.extras)

    def title(self) -> str:
        """Figure title: method, metric and model."""
        text = f"{self.meta.method}: {self.metric}"
        return f"{text} — {self.meta.model}" if self.meta.model else text

    def plot(self) -> go.Figure:
        """Default figure (a pure function of :meth:`to_frame`): heatmap over the two
        largest dims with the others averaged, a line or bars for one dim."""
        return frame_figure(
            self.to_frame(),
            dims=self.dims,
            metric=self.metric,
            title=self.title(),
            extras=list(self.extras),
        )

    def top(
        self, k: int = 10, *, by: TopBy = "abs", dims: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """The ``k`` largest cells with their coordinates, best first, with a ``rank`` column.

        ``dims`` are the dims to rank over (default: all but ``prompt``); values are
        averaged over every other dim first. ``by`` is ``"abs"`` (largest magnitude),
        ``"value"`` (most positive) or ``"-value"`` (most negative). Extras are
        kept only when they need no averaging. NaN cells are skipped.
        """
        if by not in ("abs", "value", "-value"):
            raise ResultError(f"top(by={by!r}) is not valid; use 'abs', 'value' or '-value'")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ResultError(f"top(k={k!r}) needs a non-negative int")
        keep = [d for d in self.dims if d != "prompt"] if dims is None else list(dims)
        unknown = [d for d in keep if d not in self.dims]
        if unknown:
            raise ResultError(
                f"top(dims=...) names {unknown}; this result has dims {list(self.dims)}"
            )
        if self.values.dtype.kind not in "biuf":
            raise ResultError(f"top() ranks numbers; {self.metric!r} has dtype {self.values.dtype}")
        dropped = [d for d in self.dims if d not in keep]
        values = self.values
        extras = dict(self.extras)
        if dropped:
            values = values.mean(dropped, skipna=True, keep_attrs=True)
            extras = {n: e for n, e in extras.items() if not set(e.dims) & set(dropped)}
        frame = tidy_frame(values.transpose(*keep), self.metric, extras)
        score = frame[self.metric].astype(float)
        if by == "abs":
            score = -score.abs()
        elif by == "value":
            score = -score
        order = score[score.notna()].sort_values(kind="stable").index
        out = frame.loc[order[: int(k)]].reset_index(drop=True)
        out.insert(0, "rank", np.arange(1, len(out) + 1))
        return out

    # -- display ----------------------------------------------------------------------------

    def _dims_text(self) -> str:
        return "{" + ", ".join(f"{d}: {n}" for d, n in self.sizes.items()) + "}"

    def __repr__(self) -> str:
        parts = [
            f"metric={self.metric!r}",
            f"dims={self._dims_text()}",
            f"method={self.meta.method!r}",
            f"model={self.meta.model!r}",
        ]
        if self.extras:
            parts.append(f"extras={list(self.extras)}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _repr_html_(self) -> str:
        esc = html.escape
        frame = self.to_frame()
        shown = frame.head(10).to_html(index=False, escape=True, border=0)
        more = f"<p>… {len(frame)} rows in all</p>" if len(frame) > 10 else ""
        extras = f" · extras: {esc(', '.join(self.extras))}" if self.extras else ""
        return (
            f"<div><strong>{esc(type(self).__name__)}</strong> "
            f"<code>{esc(self.metric)}</code> from <code>{esc(self.meta.method)}</code>"
            f"{' on <code>' + esc(self.meta.model) + '</code>' if self.meta.model else ''}<br>"
            f"dims: {esc(self._dims_text())}{extras}{shown}{more}</div>"
        )

    # -- examples for the common conformance test -------------------------------------------

    @classmethod
    def example(cls: type[R]) -> R:
        """A small synthetic instance (subclasses with extra fields or needs override this)."""
        rng = np.random.default_rng(0)
        values = xr.DataArray(
            rng.normal(size=(3, 5)),
            dims=("layer", "pos"),
            coords={
                "layer": np.arange(3),
                "pos": np.arange(5),
                "pos_token": ("pos", ["12", "+", "34", "=", "4"]),
            },
            name=cls.metric_name,
        )
        meta = ResultMeta(method="example", model="synthetic", seed=0, options={"n": 5})
        return cls(values=values, meta=meta)

    # -- save / load ------------------------------------------------------------------------

    def _field_values(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            if f.name in _BASE_FIELDS or not f.init:
                continue
            value = getattr(self, f.name)
            _check_json_native(value, f"{type(self).__name__}.{f.name}")
            out[f.name] = value
        return out

    def save(self, path: str | Path) -> Path:
        """Write this result into directory ``path`` atomically (replacing what is there).

        Layout: ``result.json`` (class, module, format version, metric, extra
        fields), ``meta.json``, ``values.npy`` + ``coords.json`` and
        ``extras/<name>/{values.npy,coords.json}``. No pickle anywhere.
        """
        cls = type(self)
        if _REGISTRY.get(cls.__name__) is not cls:
            raise ResultError(
                f"{cls.__name__} is not a registered result class; it could not be loaded"
            )
        header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "class": cls.__name__,
            "module": cls.__module__,
            "metric": self.metric,
            "extras": list(self.extras),
            "fields": self._field_values(),
        }
        target = Path(path)
        with atomic_dir(target) as tmp:
            write_array(self.values, tmp)
            (tmp / META_FILE).write_text(self.meta.to_json() + "\n")
            for name, extra in self.extras.items():
                folder = tmp / EXTRAS_DIR / name
                folder.mkdir(parents=True)
                write_array(extra, folder)
            (tmp / RESULT_FILE).write_text(json.dumps(header, indent=2, allow_nan=False) + "\n")
        return target

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """Read a directory written by :meth:`save`, as the class that saved it.

        ``Result.load`` accepts any result; ``SomeResult.load`` only that class
        or its subclasses. A missing, incomplete or foreign directory raises
        ``ResultError`` saying what is wrong.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise ResultError(f"no result directory at {folder}")
        needed = (RESULT_FILE, META_FILE, VALUES_FILE, COORDS_FILE)
        missing = [name for name in needed if not (folder / name).is_file()]
        if missing:
            raise ResultError(
                f"{folder} is not a complete result directory: missing {', '.join(missing)}"
            )
        header = _read_header(folder)
        klass = _resolve(header, folder)
        if not issubclass(klass, cls):
            raise ResultError(
                f"{folder} holds a {klass.__name__}, not a {cls.__name__}; "
                f"use {klass.__name__}.load or Result.load"
            )
        meta = ResultMeta.from_json((folder / META_FILE).read_text())
        values = read_array(folder)
        extras = {}
        for name in header.get("extras", []):
            if not isinstance(name, str) or not _NAME_RE.match(name):
                raise ResultError(f"{folder / RESULT_FILE} lists an invalid extra name {name!r}")
            extras[name] = read_array(folder / EXTRAS_DIR / name)
        fields = header.get("fields") or {}
        try:
            return klass(values=values, meta=meta, extras=extras, **fields)
        except TypeError as err:
            raise ResultError(f"{folder} does not fit {klass.__name__}: {err}") from err


def _read_header(folder: Path) -> dict[str, Any]:
    try:
        header = json.loads((folder / RESULT_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultError(f"{folder / RESULT_FILE} is not valid JSON: {err}") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME or "class" not in header:
        raise ResultError(f"{folder / RESULT_FILE} is not an arithinterp result header")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ResultError(
            f"{folder} uses result format version {version!r}; this arithinterp reads up to "
            f"{FORMAT_VERSION} — upgrade arithinterp"
        )
    return header


def _resolve(header: Mapping[str, Any], folder: Path) -> type[Result]:
    name, module = header["class"], header.get("module")
    if name not in _REGISTRY and isinstance(module, str) and module.split(".")[0] == "arithinterp":
        # Classes register when their module is imported; import it on demand, but
        # never import code outside arithinterp because a file on disk named it.
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ResultError(
                f"{folder} holds a {name} from {module}, which cannot be imported: {err}"
            ) from err
    if name not in _REGISTRY:
        raise ResultError(
            f"{folder} holds an unknown result class {name!r} (from module {module!r}); "
            f"import that module first. Registered: {sorted(_REGISTRY)}"
        )
    return _REGISTRY[name]


_register(Result)
