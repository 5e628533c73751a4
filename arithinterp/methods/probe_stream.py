"""Ridge probes from sufficient statistics, and the sweep that streams one site at a time.

A ridge probe on standardised features with an unpenalised intercept needs only the
statistics of its training data: the count, the feature sums and the Gram matrix ``X'X``,
and ``X'Y`` for its targets. :class:`GramRidge` accumulates them chunk by chunk (the Gram
in float32 by one BLAS ``syrk`` per problem, the fastest product there is, shifted by a
provisional mean so that centring loses nothing; everything summed in float64), folds the standardisation into the Gram
matrix (``Z'Z = D^-1 (X'X - n m m') D^-1``: no standardised copy of the data is made),
and solves every target with one Cholesky factorisation per problem. The intercept
decouples (standardised features are centred), so it is the target mean. The fit equals
:class:`~arithinterp.methods.probes.LinearProbe` ``("ridge")`` / ``("circular")`` within
float32 rounding of the Gram matrix (``tests/methods/test_probe_stream.py``).

:func:`stream_site_activations` extracts one site's activations ``[pos, prompt, d]`` chunk
of prompts by chunk, with the training prompts first, so the probe sweep
(``fit_probes(..., stream=True)``) holds one site's activations at a time instead of all
of them: peak memory about one layer's activations plus the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from arithinterp.distributed.executor import Executor
from arithinterp.methods.probes import LinearProbe, ProbeError
from arithinterp.methods.ridge import (
    blas_threads,
    cholesky,
    chunk_size,
    gram_matrices,
    ridge_buffers,
)
from arithinterp.models import Model, Site

__all__ = ["GramRidge", "RidgeFit", "StreamedProbe", "stream_site_activations"]


@dataclass(frozen=True)
class RidgeFit:
    """A solved batch of ridge problems: standardisation ``mean``/``scale [P, d]``, weights
    on standardised features ``coef [P, d, k]``, ``intercept [P, k]`` (float64)."""

    mean: torch.Tensor
    scale: torch.Tensor
    coef: torch.Tensor
    intercept: torch.Tensor

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``[P, m, k]`` for features ``x [P, m, d]``: the standardisation folded into the weights."""
        coef = self.coef / self.scale.unsqueeze(-1)
        intercept = self.intercept - (self.mean.unsqueeze(-2) @ coef).squeeze(-2)
        return torch.bmm(x.float(), coef.float()).double() + intercept.unsqueeze(-2)


class GramRidge:
    """Sufficient statistics of ``P`` ridge problems with ``k`` targets, accumulated by chunks."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: torch.Tensor | None = None  # [P, d] float32, the first chunk's mean
        self.y_shift = torch.zeros(1, 1, 1, dtype=torch.float64)  # [P or 1, 1, k], likewise

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add samples ``x [P, m, d]`` (float32 or float64) with targets ``y [P or 1, m, k]``."""
        if x.ndim != 3 or y.ndim != 3 or y.shape[1] != x.shape[1]:
            raise ProbeError(f"x must be [P, m, d] and y [P, m, k]; got {tuple(x.shape)}, {tuple(y.shape)}")
        y = y.to(torch.float64)
        if self.shift is None:
            # any provisional centre works; a few samples' mean is close enough and cheap
            self.shift = x[:, :32].mean(1, dtype=torch.float64).float()  # [P, d]
            self.y_shift = y[:, :32].mean(1, keepdim=True)
            p, d, k = x.shape[0], x.shape[2], y.shape[2]
            self.gram = torch.zeros(p, d, d, dtype=torch.float64)
            self.sx = torch.zeros(p, d, dtype=torch.float64)
            self.xy = torch.zeros(p, d, k, dtype=torch.float64)
            self.sy = torch.zeros(y.shape[0], k, dtype=torch.float64)
        ys = y - self.y_shift
        p, m, d = x.shape
        step = min(p, chunk_size(m, d))
        aug, gram = ridge_buffers(step, m, d, ys.shape[2], torch.float32)
        with blas_threads():
            for start in range(0, p, step):  # cache-sized groups of problems, one buffer for all
                part = slice(start, start + step)
                c = min(step, p - start)
                torch.sub(x[part], self.shift[part].unsqueeze(1), out=aug[:c, :, :d])
                aug[:c, :, d + 1:] = ys[part] if ys.shape[0] > 1 else ys
                # [xs | 1 | ys]'[xs | 1 | ys]: the Gram matrix, the feature sums and X'y in one syrk
                g = gram_matrices(aug[:c], gram).double()
                self.gram[part] += g[:, :d, :d]
                self.sx[part] += g[:, :d, d]
                self.xy[part] += g[:, :d, d + 1:]
        self.sy += ys.sum(1)
        self.n += m

    def solve(self, l2: float) -> RidgeFit:
        """Weights of ``(Z'Z + l2 n I) w = Z'(y - ybar)`` on standardised ``Z``, ``b = ybar``."""
        if self.shift is None:
            raise ProbeError("no samples: call update(x, y) before solve()")
        n = self.n
        mean_s = self.sx / n  # mean of the shifted features
        cov = self.gram / n - mean_s.unsqueeze(-1) * mean_s.unsqueeze(-2)
        std = cov.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
        scale = torch.where(std > 1e-12, std, torch.ones_like(std))
        inv = 1.0 / scale
        lhs = n * cov * inv.unsqueeze(-1) * inv.unsqueeze(-2)
        lhs.diagonal(dim1=-2, dim2=-1).add_(l2 * n)
        ybar_s = self.sy / n  # mean of the shifted targets
        rhs = (self.xy - n * mean_s.unsqueeze(-1) * ybar_s.unsqueeze(-2)) * inv.unsqueeze(-1)
        ybar = ybar_s + self.y_shift.squeeze(1)
        with blas_threads():
            chol = cholesky(lhs, jitter=1e-10)
        coef = torch.cholesky_solve(rhs, chol.mT, upper=True)  # one factorisation, every target
        intercept = ybar.expand(coef.shape[0], -1)
        return RidgeFit(mean=mean_s + self.shift.double(), scale=scale, coef=coef, intercept=intercept.clone())


def _targets(kind: str, y: np.ndarray, period: int | None) -> torch.Tensor:
    """``[..., n, k]`` regression targets: the value, or (cos, sin) of its angle."""
    t = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if kind == "circular":
        angle = 2 * math.pi * t / period
        return torch.stack([angle.cos(), angle.sin()], -1)
    return t.unsqueeze(-1)


class StreamedProbe:
    """:class:`LinearProbe`'s ``fit`` / ``predict`` for ``[..., n, d]`` problems, with ridge and
    circular probes solved by :class:`GramRidge` in chunks of ``chunk`` samples (logistic
    probes are :class:`LinearProbe`'s)."""

    def __init__(self, kind: str, *, l2: float = 1e-3, period: int | None = None, chunk: int = 1024):
        self.kind, self.l2, self.period, self.chunk = kind, l2, period, chunk

    def fit(self, X, y) -> StreamedProbe:
        if self.kind == "logistic":
            self._probe = LinearProbe("logistic", l2=self.l2).fit(X, y)
            return self
        x = torch.as_tensor(X)
        self._batch, (n, d) = x.shape[:-2], x.shape[-2:]
        flat = x.reshape(-1, n, d)
        target = _targets(self.kind, y, self.period)
        target = target.expand(*self._batch, n, target.shape[-1]).reshape(flat.shape[0], n, -1)
        stats = GramRidge()
        for start in range(0, n, self.chunk):
            stats.update(flat[:, start:start + self.chunk], target[:, start:start + self.chunk])
        self.fit_ = stats.solve(self.l2)
        return self

    def predict(self, X) -> np.ndarray:
        if self.kind == "logistic":
            return self._probe.predict(X)
        x = torch.as_tensor(X)
        m, d = x.shape[-2:]
        out = self.fit_.predict(x.reshape(-1, m, d)).reshape(*x.shape[:-2], m, -1)
        if self.kind == "circular":
            angle = torch.atan2(out[..., 1], out[..., 0])
            return (torch.round(angle * self.period / (2 * math.pi)) % self.period).long().numpy()
        return out[..., 0].numpy()


def cache_chunk(model: Model, tokens: torch.Tensor, *, sites: Sequence[Site],
                positions: Sequence[int]) -> torch.Tensor:
    """One chunk's activations ``[site, prompt, pos, d_model]`` (float32, on the CPU)."""
    _, cache = model.run_with_cache(tokens, sites)
    out = []
    for site in sites:
        act = cache[site]
        out.append(act[:, torch.as_tensor(list(positions), device=act.device)].float())
    return torch.stack(out).cpu()


def stream_site_activations(
    model: Model, tokens: torch.Tensor, site: Site, positions: Sequence[int], order: np.ndarray,
    *, batch_size: int = 256, executor: Executor | None = None,
) -> torch.Tensor:
    """One site's activations ``[pos, prompt, d]`` (float32), prompts in ``order`` (train first).

    Runs the model chunk by chunk, caching only ``site``, and writes each chunk straight into
    one buffer: the peak is this one site's activations plus a chunk's forward pass. With an
    ``executor`` the chunks run on its workers, a few at a time.
    """
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))  # prompt -> its row in the buffer
    extract = partial(cache_chunk, sites=[site], positions=list(positions))
    starts = list(range(0, tokens.shape[0], batch_size))
    group = 1 if executor is None else max(1, getattr(executor, "num_workers", 1))
    buffer = None
    for first in range(0, len(starts), group):  # a group of chunks at a time: bounded memory
        chunks = [tokens[s: s + batch_size] for s in starts[first: first + group]]
        acts = [extract(model, c) for c in chunks] if executor is None else \
            executor.map(extract, chunks, model=model)
        for start, act in zip(starts[first: first + group], acts):
            chunk = act[0].transpose(0, 1)  # [pos, chunk, d]
            if buffer is None:
                buffer = torch.empty(len(positions), tokens.shape[0], chunk.shape[-1], dtype=torch.float32)
            buffer[:, torch.as_tensor(where[start: start + chunk.shape[1]])] = chunk
        del acts
    assert buffer is not None
    return buffer
