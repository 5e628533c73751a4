"""A result as one ``xarray.Dataset`` and as a netCDF file, and back.

The dataset holds ``values`` as the data variable named after the metric and every extra as a
data variable beside it, on the same dims and coordinates. Its attributes say which class it
was (``arithinterp_class``), what was measured (``arithinterp_metric``) and carry the meta and
the extra fields as JSON, so :func:`from_dataset` rebuilds the same result.

netCDF has no int64 in its classic format (the one scipy writes) and no bool; the dtype of
every variable and coordinate is recorded in ``arithinterp_dtypes`` and restored on reading.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from arithinterp.errors import ResultError
from arithinterp.results.meta import ResultMeta

# ``AnyResult`` stands for arithinterp.results.base.Result, which imports this module: the
# functions take the result (or the class lookup) as an argument instead of importing it.
AnyResult = Any

__all__ = [
    "absolute_positions",
    "from_dataset",
    "netcdf_engine",
    "read_netcdf",
    "sequence_length",
    "to_dataset",
    "write_netcdf",
]

_CLASS, _METRIC, _META, _FIELDS = "arithinterp_class", "arithinterp_metric", "arithinterp_meta", "arithinterp_fields"
_EXTRAS, _DTYPES, _ATTRS = "arithinterp_extras", "arithinterp_dtypes", "arithinterp_attrs"
_COORDS = "arithinterp_coords"
_ENGINES = (("netCDF4", "netcdf4"), ("h5netcdf", "h5netcdf"), ("scipy", "scipy"))


def netcdf_engine() -> str:
    """The first installed netCDF engine of netCDF4, h5netcdf and scipy (scikit-learn
    depends on scipy, so there always is one)."""
    for module, engine in _ENGINES:
        if importlib.util.find_spec(module) is not None:
            return engine
    raise ResultError("writing netCDF needs one of netCDF4, h5netcdf or scipy installed")


def _dtypes(ds: xr.Dataset) -> dict[str, str]:
    return {str(name): str(var.dtype) for name, var in {**ds.coords, **ds.data_vars}.items()}


def to_dataset(result: AnyResult) -> xr.Dataset:
    """``values`` (named after the metric) and the extras as one dataset (see the module docs)."""
    variables = {result.metric: result.values, **result.extras}
    ds = xr.Dataset({name: array.variable for name, array in variables.items()})
    for array in variables.values():  # the coordinates of every part (extras share values' labels)
        ds = ds.assign_coords({name: coord.variable for name, coord in array.coords.items()
                               if name not in ds.coords})
    for name, array in variables.items():  # each part keeps exactly its own coordinates
        ds[name].attrs = {_COORDS: json.dumps([str(c) for c in array.coords])}
        if array.attrs:
            ds[name].attrs[_ATTRS] = json.dumps(dict(array.attrs))
    ds.attrs = {
        _CLASS: type(result).__name__,
        _METRIC: result.metric,
        _META: result.meta.to_json(indent=None),
        _FIELDS: json.dumps(result._field_values(), allow_nan=False),
        _EXTRAS: json.dumps(list(result.extras)),
        _DTYPES: json.dumps(_dtypes(ds)),
        "values_name": "" if result.values.name is None else str(result.values.name),
    }
    return ds


def _restore(array: xr.DataArray, dtypes: Mapping[str, str]) -> xr.DataArray:
    """``array`` with its and its coordinates' recorded dtypes, and its attrs, restored."""
    coords = {}
    own = json.loads(array.attrs.get(_COORDS, "null"))
    for name, coord in array.coords.items():
        if own is not None and name not in own:
            continue
        want = dtypes.get(str(name))
        data = coord.values
        if want is not None and str(data.dtype) != want:
            data = data.astype(object if want == "object" else want)
        coords[name] = (coord.dims, data)
    data = array.values
    want = dtypes.get(str(array.name))
    if want is not None and str(data.dtype) != want:
        data = data.astype(want)
    attrs = json.loads(array.attrs[_ATTRS]) if _ATTRS in array.attrs else {}
    return xr.DataArray(data, dims=array.dims, coords=coords, attrs=attrs)


def from_dataset(ds: xr.Dataset, cls: type, result_class: Callable[[str], type]) -> AnyResult:
    """The result :func:`to_dataset` made ``ds`` from, as its class (looked up by name with
    ``result_class``), which must be ``cls`` or a subclass of it."""
    missing = [key for key in (_CLASS, _METRIC, _META, _FIELDS, _EXTRAS) if key not in ds.attrs]
    if missing:
        raise ResultError(f"this dataset was not written by Result.to_xarray: no attrs {missing}")
    klass = result_class(str(ds.attrs[_CLASS]))
    if not issubclass(klass, cls):
        raise ResultError(f"the dataset holds a {klass.__name__}, not a {cls.__name__}")
    metric = str(ds.attrs[_METRIC])
    dtypes = json.loads(ds.attrs.get(_DTYPES, "{}"))
    extras = {name: _restore(ds[name], dtypes) for name in json.loads(ds.attrs[_EXTRAS])}
    values = _restore(ds[metric], dtypes)
    name = ds.attrs.get("values_name", "")
    values.name = name if name else None
    meta = ResultMeta.from_json(str(ds.attrs[_META]))
    fields = json.loads(ds.attrs[_FIELDS])
    try:
        return klass(values=values, meta=meta, extras=extras, **fields)
    except TypeError as err:
        raise ResultError(f"the dataset does not fit {klass.__name__}: {err}") from err


def write_netcdf(result: AnyResult, path: str | Path, *, engine: str | None = None) -> Path:
    """Write :func:`to_dataset` of ``result`` to the netCDF file ``path``."""
    target = Path(path)
    ds = to_dataset(result)
    # netCDF stores strings, not Python objects: give object coordinates str values.
    for name, coord in ds.coords.items():
        if coord.dtype == object:
            ds = ds.assign_coords({name: (coord.dims, np.array([str(v) for v in coord.values.ravel()],
                                                                dtype=object).reshape(coord.shape))})
    ds.to_netcdf(target, engine=engine or netcdf_engine())
    return target


def read_netcdf(path: str | Path, cls: type, result_class: Callable[[str], type], *,
                engine: str | None = None) -> AnyResult:
    """The result in a netCDF file written by :func:`write_netcdf` (see :func:`from_dataset`)."""
    source = Path(path)
    if not source.is_file():
        raise ResultError(f"no netCDF file at {source}")
    with xr.open_dataset(source, engine=engine or netcdf_engine()) as ds:
        return from_dataset(ds.load(), cls, result_class)


def absolute_positions(result: AnyResult, pos: Any) -> Any:
    """``pos`` (an int, a list of ints, or anything else ``sel`` takes, passed through) with
    negative positions counted from the end of the sequence ``result`` covers."""
    ints = (int, np.integer)
    many = isinstance(pos, (list, tuple, np.ndarray))
    items = list(pos) if many else [pos]
    if not all(isinstance(p, ints) and not isinstance(p, bool) for p in items):
        return pos
    if any(p < 0 for p in items):
        n = sequence_length(result)
        if n is None:
            raise ResultError(
                f"{type(result).__name__}.at(pos={pos!r}): this result covers positions "
                f"{result.values['pos'].values.tolist()} of a sequence of unknown length, "
                "so a negative position has no meaning; select absolute positions"
            )
        bad = [p for p in items if not -n <= p < n]
        if bad:
            raise ResultError(f"positions {bad} are outside a sequence of {n} tokens")
        items = [int(p) % n for p in items]
    present = set(result.values["pos"].values.tolist())
    absent = [p for p in items if p not in present]
    if absent:
        raise ResultError(
            f"{type(result).__name__} has no position {absent[0]} (asked for {pos!r}); "
            f"its positions: {sorted(present)}"
        )
    return items if many else items[0]


def sequence_length(result: AnyResult) -> int | None:
    """The length of the sequence ``result``'s ``pos`` axis indexes: ``meta.extra["seq_len"]``,
    else ``n`` when the axis is every position ``0 .. n-1``, else unknown (``None``)."""
    seq_len = result.meta.extra.get("seq_len")
    if isinstance(seq_len, int) and seq_len > 0:
        return seq_len
    pos = np.asarray(result.values["pos"].values)
    if pos.dtype.kind in "iu" and np.array_equal(pos, np.arange(len(pos))):
        return len(pos)
    return None
