"""Labeled arrays to tidy pandas frames (one row per cell)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["dim_labels", "tidy_frame"]


def dim_labels(array: xr.DataArray, dim: str) -> np.ndarray:
    """The coordinate labels of ``dim``, or positions ``0..n-1`` when it has none."""
    if dim in array.coords and array.coords[dim].dims == (dim,):
        return np.asarray(array.coords[dim].values)
    return np.arange(array.sizes[dim])


def _broadcast_flat(part: xr.DataArray, dims: Sequence[str], shape: tuple[int, ...]) -> np.ndarray:
    """``part`` (whose dims are a subset of ``dims``) broadcast to ``shape`` and raveled."""
    own = [d for d in dims if d in part.dims]
    data = np.asarray(part.transpose(*own).values)
    index = tuple(slice(None) if d in part.dims else np.newaxis for d in dims)
    return np.broadcast_to(data[index], shape).ravel()


def tidy_frame(
    values: xr.DataArray,
    metric: str,
    extras: Mapping[str, xr.DataArray] | None = None,
) -> pd.DataFrame:
    """One row per cell of ``values``.

    Columns, in order: each dim (its coordinate labels, or integer positions
    when the dim has no coordinate), each non-index coordinate (broadcast,
    e.g. ``pos_token``), the values under the name ``metric``, then one
    column per extra (each broadcast over the dims it lacks).
    """
    dims = [str(d) for d in values.dims]
    shape = tuple(values.shape)
    n = int(np.prod(shape, dtype=np.int64))
    columns: dict[str, np.ndarray] = {}
    positions = np.unravel_index(np.arange(n), shape) if dims else ()
    for dim, pos in zip(dims, positions):
        columns[dim] = dim_labels(values, dim)[pos]
    for name, coord in values.coords.items():
        if name not in dims:
            columns[str(name)] = _broadcast_flat(coord, dims, shape)
    columns[metric] = np.asarray(values.values).reshape(n)
    for name, extra in (extras or {}).items():
        columns[name] = _broadcast_flat(extra, dims, shape)
    return pd.DataFrame(columns, index=pd.RangeIndex(n))
