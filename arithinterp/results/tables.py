"""Generic result classes other analyses build on.

- :class:`ScalarTable`: one named metric over any dims of the axis vocabulary.
- :class:`EstimateTable`: a mean over prompts with a bootstrap interval
  (``ci_low``/``ci_high``) and the number of prompts behind each cell (``n``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from arithinterp.errors import ResultError
from arithinterp.results.base import Result
from arithinterp.results.meta import ResultMeta
from arithinterp.results.plotting import CI_HIGH, CI_LOW
from arithinterp.results.stats import bootstrap_ci

__all__ = ["EstimateTable", "ScalarTable"]


class ScalarTable(Result):
    """Any one metric over any dims; the metric's name is ``values.name``.

    The generic result for numbers that need no behaviour of their own:
    accuracies per digit, scores per (layer, head), effects per component.
    """

    @property
    def metric(self) -> str:
        name = self.values.name
        return name if isinstance(name, str) and name else type(self).metric_name

    @classmethod
    def from_array(
        cls,
        data: Any,
        *,
        dims: Sequence[str],
        meta: ResultMeta,
        metric: str = "value",
        coords: Mapping[str, Any] | None = None,
        extras: Mapping[str, xr.DataArray] | None = None,
    ) -> ScalarTable:
        """Wrap an array (numpy, torch on CPU, nested lists) with named dims and coords."""
        if hasattr(data, "detach"):  # a torch tensor, without importing torch here
            data = data.detach().cpu().numpy()
        values = xr.DataArray(np.asarray(data), dims=tuple(dims), coords=coords, name=metric)
        return cls(values=values, meta=meta, extras=dict(extras or {}))

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        dims: Sequence[str],
        metric: str,
        meta: ResultMeta,
        extras: Sequence[str] = (),
    ) -> ScalarTable:
        """The inverse of :meth:`to_frame`: one row per cell, dims as columns.

        Dim labels keep their order of first appearance; cells with no row are
        NaN. Columns named ``{dim}_*`` (e.g. ``pos_token``) that have one value
        per label become non-index coordinates; ``extras`` columns become extras.
        """
        dims = list(dims)
        missing = [c for c in [*dims, metric, *extras] if c not in frame.columns]
        if missing:
            raise ResultError(
                f"from_frame: frame lacks columns {missing}; it has {list(frame.columns)}"
            )
        if frame.duplicated(subset=dims).any():
            raise ResultError(
                f"from_frame: several rows share the same {dims}; aggregate them first"
            )
        labels = {d: pd.unique(frame[d]) for d in dims}
        shape = tuple(len(labels[d]) for d in dims)
        where = tuple(pd.Index(labels[d]).get_indexer(frame[d]) for d in dims)

        def grid(column: str) -> np.ndarray:
            source = frame[column].to_numpy()
            if source.dtype.kind in "biu":
                source = source.astype(np.float64)
            out = np.full(shape, np.nan, dtype=source.dtype if source.dtype.kind == "f" else object)
            out[where] = source
            return out if out.dtype.kind == "f" else out.astype(str)

        coords: dict[str, Any] = {d: np.asarray(labels[d]) for d in dims}
        for column in frame.columns:
            dim = next((d for d in dims if str(column).startswith(f"{d}_")), None)
            if dim is None or column in (metric, *extras):
                continue
            per_label = frame.groupby(dim, sort=False)[column]
            if per_label.nunique(dropna=False).max() <= 1:
                coords[str(column)] = (dim, per_label.first().reindex(labels[dim]).to_numpy())
        values = xr.DataArray(grid(metric), dims=dims, coords=coords, name=metric)
        extra_arrays = {
            name: xr.DataArray(grid(name), dims=dims, coords={d: coords[d] for d in dims})
            for name in extras
        }
        return cls(values=values, meta=meta, extras=extra_arrays)

    @classmethod
    def example(cls) -> ScalarTable:
        rng = np.random.default_rng(1)
        data = rng.normal(size=(4, 3, 2))
        return cls.from_array(
            data,
            dims=("prompt", "layer", "component"),
            coords={
                "layer": np.arange(3),
                "component": ["attn", "mlp"],
                "prompt_text": ("prompt", ["12+34=", "55+17=", "90+09=", "31+31="]),
            },
            metric="logit_diff",
            meta=ResultMeta(method="example", model="synthetic", seed=1),
        )


class EstimateTable(ScalarTable):
    """A mean over prompts with a percentile-bootstrap interval.

    Extras: ``ci_low`` and ``ci_high`` (required) and usually ``n``, the number
    of finite samples behind each cell. ``values.attrs`` records the interval's
    ``ci_level``, ``n_boot`` and ``ci_seed``.
    """

    metric_name = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        missing = [name for name in (CI_LOW, CI_HIGH) if name not in self.extras]
        if missing:
            raise ResultError(f"EstimateTable needs extras {missing} (the interval bounds)")

    @classmethod
    def from_samples(
        cls,
        samples: xr.DataArray,
        *,
        meta: ResultMeta,
        dim: str = "prompt",
        metric: str | None = None,
        n_boot: int = 1000,
        alpha: float = 0.05,
        seed: int = 0,
    ) -> EstimateTable:
        """Average ``samples`` over ``dim`` and attach a bootstrap ``1 - alpha`` interval."""
        if not isinstance(samples, xr.DataArray):
            raise ResultError("EstimateTable.from_samples needs a DataArray with a prompt dim")
        mean, low, high = bootstrap_ci(samples, dim=dim, n_boot=n_boot, alpha=alpha, seed=seed)
        name = (
            metric or (samples.name if isinstance(samples.name, str) else None) or cls.metric_name
        )
        mean = mean.rename(name)
        mean.attrs = {"ci_level": 1 - alpha, "n_boot": int(n_boot), "ci_seed": int(seed)}
        count = np.isfinite(samples.astype(np.float64)).sum(dim).astype(np.int64)
        extras = {CI_LOW: low.rename(None), CI_HIGH: high.rename(None), "n": count.rename(None)}
        return cls(values=mean, meta=meta, extras=extras)

    @classmethod
    def example(cls) -> EstimateTable:
        rng = np.random.default_rng(2)
        samples = xr.DataArray(
            rng.random((30, 3)) < np.array([0.9, 0.7, 0.4]),
            dims=("prompt", "digit"),
            coords={"digit": [0, 1, 2], "digit_place": ("digit", ["units", "tens", "hundreds"])},
            name="accuracy",
        )
        meta = ResultMeta(method="example", model="synthetic", seed=2, options={"n_boot": 200})
        return cls.from_samples(samples, meta=meta, n_boot=200, seed=2)
