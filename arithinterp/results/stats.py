"""Uncertainty over prompts: a vectorised, seeded percentile bootstrap."""

from __future__ import annotations

import warnings
from typing import overload

import numpy as np
import xarray as xr

from arithinterp.errors import ResultError

__all__ = ["bootstrap_ci"]

# Bootstrap means are computed for this many output cells at a time, so memory
# stays near n_boot * _CHUNK floats however large the array is.
_CHUNK = 4096


def _resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) matrix: how often each sample is drawn in each bootstrap replicate."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    flat = (draws + np.arange(n_boot)[:, None] * n).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _bootstrap_2d(
    data: np.ndarray, n_boot: int, alpha: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``data`` is (n, cells); returns nan-aware mean, low and high per cell."""
    n, cells = data.shape
    present = np.isfinite(data)
    filled = np.where(present, data, 0.0)
    complete = bool(present.all())
    counts = _resample_counts(n, n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=0) / present.sum(axis=0)
    low = np.empty(cells)
    high = np.empty(cells)
    quantiles = [alpha / 2, 1 - alpha / 2]
    for start in range(0, cells, _CHUNK):
        part = slice(start, start + _CHUNK)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (counts @ filled[:, part]) / (counts @ present[:, part].astype(np.float64))
        if complete:
            low[part], high[part] = np.quantile(boot, quantiles, axis=0)
            continue
        # A replicate that drew no finite sample has no mean; leave it out of the percentiles.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low[part], high[part] = np.nanquantile(boot, quantiles, axis=0)
    return mean, low, high


@overload
def bootstrap_ci(
    samples: xr.DataArray,
    *,
    dim: str = ...,
    axis: None = ...,
    n_boot: int = ...,
    alpha: float = ...,
    seed: int = ...,
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]: ...


@overload
def bootstrap_ci(
    samples: np.ndarray,
    *,
    dim: str = ...,
    axis: int | None = ...,
    n_boot: int = ...,
    alpha: float = ...,
    seed: int = ...,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def bootstrap_ci(
    samples: np.ndarray | xr.DataArray,
    *,
    dim: str = "prompt",
    axis: int | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Mean and percentile-bootstrap ``1 - alpha`` interval over prompts.

    For a DataArray the prompts lie along ``dim`` and the results are
    DataArrays without it (other coords kept); for an ndarray along ``axis``
    (default 0). Every output cell uses the same ``n_boot`` resamplings of the
    prompts, drawn from ``seed``, so results are deterministic and cells are
    comparable. NaN samples are ignored (nan-mean); a cell with no finite
    sample gives NaN.

    Returns ``(mean, low, high)``.
    """
    if not 0 < alpha < 1:
        raise ResultError(f"alpha={alpha!r} must lie strictly between 0 and 1")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ResultError(f"n_boot={n_boot!r} must be a positive int")
    if isinstance(samples, xr.DataArray):
        if dim not in samples.dims:
            raise ResultError(f"bootstrap_ci(dim={dim!r}): samples have dims {list(samples.dims)}")
        # The mean's coords are exactly the coords that survive reducing over `dim`.
        template = samples.mean(dim, skipna=True)
        data = np.moveaxis(
            np.asarray(samples.values, dtype=np.float64), samples.get_axis_num(dim), 0
        )
        mean, low, high = bootstrap_ci(data, axis=0, n_boot=n_boot, alpha=alpha, seed=seed)
        return (template.copy(data=mean), template.copy(data=low), template.copy(data=high))
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim == 0:
        raise ResultError("bootstrap_ci needs at least one axis of samples")
    data = np.moveaxis(data, 0 if axis is None else axis, 0)
    n, rest = data.shape[0], data.shape[1:]
    if n == 0:
        raise ResultError("bootstrap_ci got zero samples along the prompt axis")
    mean, low, high = _bootstrap_2d(data.reshape(n, -1), int(n_boot), float(alpha), int(seed))
    return mean.reshape(rest), low.reshape(rest), high.reshape(rest)
