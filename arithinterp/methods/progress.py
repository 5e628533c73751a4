"""Grokking progress measures (Nanda et al., ICLR 2023) for mod-``p`` addition models.

- :func:`modadd_logits`, :func:`modadd_loss`, :func:`modadd_split`: the logits over
  every operand pair, their cross-entropy, and the zoo's train/test split.
- :func:`restricted_loss` / :func:`excluded_loss`: cross-entropy of the logits
  keeping / removing their components along ``cos, sin(w_k(a+b-c))`` for the key
  frequencies (:func:`~arithinterp.methods.fourier.key_frequencies`).
- :func:`progress_measures` tracks them, with train/test loss and the number of
  key frequencies, over training checkpoints (:func:`zoo_checkpoints`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr

from arithinterp.errors import ArithInterpError, MethodError
from arithinterp.methods._common import make_meta
from arithinterp.methods.fourier import key_frequencies, modadd_tokens
from arithinterp.models import Model
from arithinterp.results import Result, ResultMeta

__all__ = [
    "PROGRESS_METRICS",
    "ProgressResult",
    "excluded_loss",
    "key_frequency_component",
    "modadd_logits",
    "modadd_loss",
    "modadd_split",
    "progress_measures",
    "restricted_loss",
    "zoo_checkpoints",
]



def modadd_logits(model: Model, p: int = 113) -> torch.Tensor:
    """Logits at the answer position over ``c < p`` for every ``(a, b)``: ``[p, p, p]`` float64."""
    logits = model.logits(modadd_tokens(p).reshape(-1, 3))
    return logits[:, -1, :p].detach().double().reshape(p, p, p).cpu()


def key_frequency_component(logits: torch.Tensor, freqs: Sequence[int]) -> torch.Tensor:
    """The part of ``logits[a, b, c]`` along ``cos, sin(w_k(a+b-c))`` for ``k`` in ``freqs``."""
    p = logits.shape[0]
    idx = torch.arange(p, dtype=torch.float64)
    phase = (idx[:, None, None] + idx[None, :, None] - idx[None, None, :]) * (2 * math.pi / p)
    out = torch.zeros_like(logits)
    for k in sorted(set(int(f) for f in freqs)):
        if not 1 <= k <= p // 2:
            raise MethodError(f"frequency {k} outside 1..{p // 2}")
        for direction in (torch.cos(k * phase), torch.sin(k * phase)):
            norm2 = direction.pow(2).sum()
            if norm2 > 1e-9:  # sin vanishes at k = p/2 for even p
                out += (logits * direction).sum() / norm2 * direction
    return out


def modadd_loss(logits: torch.Tensor, pairs: np.ndarray | None = None) -> float:
    """Mean cross-entropy of :func:`modadd_logits` ``[p, p, p]`` on ``pairs`` (default all)."""
    p = logits.shape[0]
    logp = torch.log_softmax(logits, dim=-1)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    correct = logp.gather(-1, ((a + b) % p).unsqueeze(-1)).squeeze(-1)
    if pairs is None:
        return float(-correct.mean())
    pairs = np.asarray(pairs)
    return float(-correct[pairs[:, 0], pairs[:, 1]].mean())


def _logits_of(model_or_logits: Model | torch.Tensor, p: int) -> torch.Tensor:
    if isinstance(model_or_logits, torch.Tensor):
        return model_or_logits.double()
    return modadd_logits(model_or_logits, p)


def restricted_loss(
    model: Model | torch.Tensor,
    freqs: Sequence[int],
    *,
    p: int = 113,
    pairs: np.ndarray | None = None,
) -> float:
    """Cross-entropy keeping only the logits' key-frequency components (plus their mean over ``c``).

    ``model``: a model or its :func:`modadd_logits`. ``pairs``: ``(n, 2)`` operands
    to average over (default all ``p²``, as Nanda et al.)."""
    logits = _logits_of(model, p)
    kept = key_frequency_component(logits, freqs) + logits.mean(dim=-1, keepdim=True)
    return modadd_loss(kept, pairs)


def excluded_loss(
    model: Model | torch.Tensor,
    freqs: Sequence[int],
    *,
    p: int = 113,
    pairs: np.ndarray | None = None,
) -> float:
    """Cross-entropy after removing the logits' key-frequency components.

    Nanda et al. evaluate it on the training pairs (pass them as ``pairs``)."""
    logits = _logits_of(model, p)
    return modadd_loss(logits - key_frequency_component(logits, freqs), pairs)


def modadd_split(p: int = 113, train_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The zoo's seeded ``(train, test)`` operand pairs for mod-``p`` addition."""
    from arithinterp.zoo.data import split_pairs

    return split_pairs(p, train_fraction, seed)


class ProgressResult(Result):
    """Nanda et al.'s progress measures over training checkpoints.

    ``values``: dims ``(checkpoint, metric)``; ``checkpoint`` is the training step,
    ``metric`` one of ``train_loss, test_loss, restricted_loss, excluded_loss,
    n_key_freqs``.
    """

    metric_name = "measure"

    def plot(self) -> go.Figure:
        fig = go.Figure()
        steps = self.values.coords["checkpoint"].values
        for name in self.values.coords["metric"].values:
            fig.add_trace(
                go.Scatter(
                    x=steps,
                    y=self.values.sel(metric=name).values,
                    mode="lines+markers",
                    name=str(name),
                    yaxis="y2" if name == "n_key_freqs" else "y",
                )
            )
        fig.update_layout(
            title=f"progress measures: {self.meta.model}",
            xaxis_title="training step",
            yaxis={"title": "loss (nats)", "type": "log"},
            yaxis2={"title": "key frequencies", "overlaying": "y", "side": "right"},
        )
        return fig

    @classmethod
    def example(cls) -> ProgressResult:
        values = xr.DataArray(
            np.array([[1e-2, 4.5, 3.0, 4.6, 6], [1e-4, 1.0, 0.1, 9.0, 5], [1e-6, 1e-5, 1e-6, 12.0, 4]]),
            dims=("checkpoint", "metric"),
            coords={"checkpoint": [250, 1000, 3000], "metric": list(PROGRESS_METRICS)},
        )
        return cls(values=values, meta=ResultMeta(method="progress_measures", model="synthetic"))


PROGRESS_METRICS = ("train_loss", "test_loss", "restricted_loss", "excluded_loss", "n_key_freqs")


def zoo_checkpoints(name: str = "modadd-113") -> dict[int, Path]:
    """``{step: directory}`` of a zoo model's shipped checkpoints."""
    from arithinterp.zoo.registry import list_checkpoints, load_checkpoint_dir

    return {step: load_checkpoint_dir(name, step) for step in list_checkpoints(name)}


def progress_measures(
    checkpoints: Mapping[int, Model | str | Path],
    *,
    p: int = 113,
    train_fraction: float = 0.3,
    seed: int = 0,
    key_freqs: Sequence[int] | None = None,
    threshold: float = 0.85,
) -> ProgressResult:
    """Train/test loss, restricted and excluded loss and key-frequency count per checkpoint.

    ``checkpoints``: ``{step: model or loadable path}`` (e.g. :func:`zoo_checkpoints`).
    Restricted/excluded losses use ``key_freqs`` (default: those of the last
    checkpoint, as Nanda et al. use the final model's); ``n_key_freqs`` is
    each checkpoint's own count. The split is :func:`modadd_split`.
    """
    from arithinterp.models import load_model

    if not checkpoints:
        raise ArithInterpError("progress_measures needs at least one checkpoint")
    train, test = modadd_split(p, train_fraction, seed)
    models = {
        int(step): m if isinstance(m, Model) else load_model(str(m))
        for step, m in sorted(checkpoints.items())
    }
    steps = list(models)
    per_step_freqs = {s: key_frequencies(models[s], p=p, threshold=threshold).key_freqs for s in steps}
    freqs = list(key_freqs) if key_freqs is not None else per_step_freqs[steps[-1]]
    rows = []
    for s in steps:
        logits = modadd_logits(models[s], p)
        rows.append([
            modadd_loss(logits, train),
            modadd_loss(logits, test),
            restricted_loss(logits, freqs, p=p),
            excluded_loss(logits, freqs, p=p, pairs=train),
            float(len(per_step_freqs[s])),
        ])
    values = xr.DataArray(
        np.array(rows),
        dims=("checkpoint", "metric"),
        coords={"checkpoint": steps, "metric": list(PROGRESS_METRICS)},
    )
    last = models[steps[-1]]
    meta = make_meta(
        "progress_measures",
        last,
        seed=seed,
        options={"p": p, "train_fraction": train_fraction, "threshold": threshold},
        extra={"key_freqs": [int(k) for k in freqs]},
    )
    return ProgressResult(values=values, meta=meta)
