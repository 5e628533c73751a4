"""The results of :func:`arithinterp.methods.digit_confidence`: per answer position, free-running
against teacher-forced accuracy and confidence, with per-prompt records beside the summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from arithinterp.results import Result, ResultMeta, resultclass

__all__ = ["MEASURES", "RECORD_METRICS", "SUMMARY_METRICS", "DigitConfidenceResult", "DigitRecords"]

#: What is measured at each answer position, under each of the two decodings: ``correct`` (the
#: argmax token is the true one), ``confidence`` (the probability of the argmax token: the
#: paper's confidence) and ``p_true`` (the probability of the true token).
RECORD_METRICS: tuple[str, ...] = ("correct_free", "confidence_free", "p_true_free",
                                   "correct_forced", "confidence_forced", "p_true_forced")

#: The summary's measures in headline order; each comes as ``_free``, ``_forced`` and ``_diff``
#: (teacher-forced minus free-running).
MEASURES: tuple[str, ...] = ("confidence", "accuracy", "p_true")
SUMMARY_METRICS: tuple[str, ...] = tuple(f"{m}_{mode}" for m in MEASURES for mode in ("free", "forced", "diff"))

_COLORS = {"free": "#d62728", "forced": "#1f77b4"}
_TITLES = {"free": "free-running", "forced": "teacher-forced"}


@resultclass
class DigitRecords(Result):
    """One row per prompt and answer position: the raw records behind a
    :class:`DigitConfidenceResult`.

    ``values``: dims ``(prompt, digit, metric)``, metric in :data:`RECORD_METRICS` (under MC
    dropout each is the mean over the stochastic passes, so ``correct_*`` is the fraction of
    passes that were right). Coordinates on ``prompt``: ``seed`` (the prompt set's seed) and
    ``prompt_id`` (the row in that set); on ``digit``: ``digit_place``, ``digit_role``.
    Extras: ``true_token`` and ``decoded`` (the free-running greedy tokens; under MC dropout
    those of the first pass), token ids.
    """

    metric_name = "record"

    def records(self, metric: str) -> xr.DataArray:
        """One record over ``(prompt, digit)``."""
        return self.values.sel(metric=metric)

    @classmethod
    def example(cls) -> DigitRecords:
        rng = np.random.default_rng(0)
        n, digits = 6, 3
        data = rng.random((n, digits, len(RECORD_METRICS)))
        data[..., [0, 3]] = (data[..., [0, 3]] > 0.3).astype(float)
        coords = {"prompt": np.arange(n), "digit": np.arange(digits), "metric": list(RECORD_METRICS),
                  "seed": ("prompt", np.zeros(n, dtype=np.int64)), "prompt_id": ("prompt", np.arange(n)),
                  "digit_place": ("digit", ["10^2", "10^1", "10^0"]),
                  "digit_role": ("digit", ["most significant", "middle", "least significant"])}
        values = xr.DataArray(data, dims=("prompt", "digit", "metric"), coords=coords)
        pd_coords = {k: v for k, v in coords.items() if k != "metric"}
        tokens = rng.integers(0, 10, (n, digits))
        extras = {"true_token": xr.DataArray(tokens, dims=("prompt", "digit"), coords=pd_coords),
                  "decoded": xr.DataArray(tokens, dims=("prompt", "digit"), coords=pd_coords)}
        return cls(values=values, meta=ResultMeta(method="digit_confidence", model="example", seed=0),
                   extras=extras)


@resultclass
class DigitConfidenceResult(Result):
    """Per answer position (``digit``, in the order the model writes the answer): accuracy and
    confidence under free-running greedy decoding and under teacher forcing.

    ``values``: dims ``(digit, metric)``, the mean over prompts (over the prompt sets of
    several seeds, and over MC-dropout passes) of each metric in :data:`SUMMARY_METRICS`:
    ``confidence_*`` is the probability of the argmax token (the paper's confidence, the
    headline), ``accuracy_*`` how often the argmax is the true token, ``p_true_*`` the
    probability of the true token; ``*_diff`` is teacher-forced minus free-running.

    Coordinates on ``digit``: ``digit_place`` (the decimal place the token writes, ``10^k``;
    ``10^a..10^b`` for a token of several digits, ``sign``, ``varies`` when prompts differ) and
    ``digit_role`` (``most significant``, ``least significant``, ``middle``, ``sign``, ...).

    Extras: ``ci_low`` / ``ci_high``, a 95% interval (``meta.extra["interval"]`` says over
    what); under MC dropout (only then) ``mc_std``, the standard deviation over the passes of
    the per-position mean (how much the number itself moves from pass to pass), and
    ``mc_std_prompt``, each prompt's standard deviation over the passes averaged over the
    prompts (how unsure the model is of one answer). Both are NaN with one pass.
    ``records`` holds the per-prompt records; ``save``/``load`` keep them, and a result read
    back from netCDF (``to_netcdf``, which exports the summary and its intervals) has none.
    """

    metric_name = "mean"
    records: DigitRecords | None = None

    # -- views ------------------------------------------------------------------------------

    @property
    def order(self) -> str:
        """``"most significant first"`` or ``"least significant first"``."""
        return str(self.meta.extra.get("order", ""))

    def table(self) -> pd.DataFrame:
        """One row per answer position: place, role, then every metric (headline first) with
        its interval as ``<metric>_low`` / ``<metric>_high``."""
        mean = self.values.transpose("digit", "metric").to_pandas()
        out = pd.DataFrame({"digit": self.values.coords["digit"].values,
                            "digit_place": self.values.coords["digit_place"].values,
                            "digit_role": self.values.coords["digit_role"].values})
        for m in SUMMARY_METRICS:
            out[m] = mean[m].to_numpy()
        for m in SUMMARY_METRICS:
            out[f"{m}_low"] = self.extras["ci_low"].sel(metric=m).values
            out[f"{m}_high"] = self.extras["ci_high"].sel(metric=m).values
        return out

    def by_role(self, role: str) -> pd.Series:
        """The metrics at the position whose ``digit_role`` is ``role`` (``"most significant"``:
        the paper's first digit, ``"least significant"``: its last digit)."""
        roles = list(self.values.coords["digit_role"].values)
        if roles.count(role) != 1:
            from arithinterp.errors import ResultError

            raise ResultError(f"no single answer position has role {role!r}; the roles are {roles}")
        return self.values.isel(digit=roles.index(role)).to_series()

    def summary(self) -> dict:
        """The paper's comparison in numbers: every metric of its first digit (the most
        significant, key ``most_significant``) and its last (``least_significant``), whatever
        order the model writes them in."""
        out: dict = {"order": self.order, "positions": self.meta.extra.get("positions"),
                     "interval": self.meta.extra.get("interval")}
        for role in ("most significant", "least significant"):
            if list(self.values.coords["digit_role"].values).count(role) == 1:
                row = self.by_role(role)
                out[role.replace(" ", "_")] = {m: float(row[m]) for m in SUMMARY_METRICS}
        return out

    def headline(self) -> str:
        """One line: the most and least significant digit's confidence, free-running -> teacher-forced."""
        parts = []
        for role in ("most significant", "least significant"):
            if list(self.values.coords["digit_role"].values).count(role) == 1:
                row = self.by_role(role)
                parts.append(f"{role} digit confidence {row['confidence_free']:.3f} -> {row['confidence_forced']:.3f}")
        return "; ".join(parts) + " (free-running -> teacher-forced)" if parts else ""

    # -- figure -----------------------------------------------------------------------------

    def plot(self) -> go.Figure:
        """Per position: free-running against teacher-forced confidence (left; p(true) as
        dotted lines, hidden until clicked in the legend) and accuracy (right), with the 95%
        interval as error bars. A pure function of :meth:`to_frame`."""
        frame = self.to_frame()
        fig = make_subplots(rows=1, cols=2, subplot_titles=(
            "confidence: p(argmax token)", "accuracy: argmax is the true token"))
        for col, measure in ((1, "confidence"), (2, "accuracy")):
            for mode in ("free", "forced"):
                _add_trace(fig, frame, f"{measure}_{mode}", mode, col, dash=None, show=col == 1)
        for mode in ("free", "forced"):
            _add_trace(fig, frame, f"p_true_{mode}", mode, 1, dash="dot", show=True, hidden=True,
                       name=f"p(true), {_TITLES[mode]}")
        fig.update_yaxes(range=[0, 1.05])
        fig.update_xaxes(title_text=f"answer position ({self.order or 'written order'})")
        fig.update_layout(title=f"{self.meta.model}: confidence per answer digit, free-running vs "
                                f"teacher-forced", legend={"orientation": "h", "y": -0.2})
        return fig

    @classmethod
    def example(cls) -> DigitConfidenceResult:
        records = DigitRecords.example()
        per_prompt = summary_from_records(records.values.values)
        mean = per_prompt.mean(axis=0)
        coords = {"digit": records.values.coords["digit"].values, "metric": list(SUMMARY_METRICS),
                  "digit_place": ("digit", records.values.coords["digit_place"].values),
                  "digit_role": ("digit", records.values.coords["digit_role"].values)}
        values = xr.DataArray(mean, dims=("digit", "metric"), coords=coords)
        extras = {"ci_low": values - 0.1, "ci_high": values + 0.1}
        meta = ResultMeta(method="digit_confidence", model="example", seed=0,
                          extra={"order": "most significant first", "positions": "one digit per token",
                                 "interval": "bootstrap over prompts"})
        return cls(values=values, meta=meta, extras=extras, records=records)


def summary_from_records(records: np.ndarray) -> np.ndarray:
    """``[..., digit, RECORD_METRICS]`` records -> ``[..., digit, SUMMARY_METRICS]``."""
    r = {m: records[..., i] for i, m in enumerate(RECORD_METRICS)}
    source = {"confidence": "confidence", "accuracy": "correct", "p_true": "p_true"}
    out = []
    for measure in MEASURES:
        free, forced = r[f"{source[measure]}_free"], r[f"{source[measure]}_forced"]
        out += [free, forced, forced - free]
    return np.stack(out, axis=-1)


def _add_trace(fig: go.Figure, frame: pd.DataFrame, metric: str, mode: str, col: int, *,
               dash: str | None, show: bool, hidden: bool = False, name: str | None = None) -> None:
    rows = frame[frame["metric"] == metric].sort_values("digit")
    x = [f"{d}: {p}" for d, p in zip(rows["digit"], rows["digit_place"])]
    y = rows["mean"].to_numpy(dtype=float)
    error = {"type": "data", "symmetric": False,
             "array": rows["ci_high"].to_numpy(dtype=float) - y,
             "arrayminus": y - rows["ci_low"].to_numpy(dtype=float)}
    fig.add_trace(go.Scatter(
        x=x, y=y, error_y=error, mode="lines+markers", name=name or _TITLES[mode], legendgroup=name or mode,
        showlegend=show, line={"color": _COLORS[mode], "dash": dash},
        visible="legendonly" if hidden else True,
        customdata=rows["digit_role"], hovertemplate="%{x} (%{customdata})<br>%{y:.3f}<extra></extra>",
    ), 1, col)
