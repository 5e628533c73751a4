"""Fourier features of arithmetic: bases, key frequencies, spectra.

- :func:`fourier_basis` / :func:`digit_basis`: orthonormal real Fourier bases over
  ``0..p-1`` (Nanda et al. 2023) and over the ten digits (Bai et al. 2025).
- :func:`key_frequencies` (Nanda et al., ICLR 2023, ``calculate_key_freqs``): for
  each MLP neuron at the answer position, the frequency ``k`` whose 2D block
  ``{const, cos k, sin k}^2`` over the operands ``(a, b)`` explains most of its
  variance.
- :func:`head_key_frequencies`: the same per attention head, on what each head
  writes to the residual stream (pooled over ``d_model``).
- :func:`fourier_spectrum` and its helpers (Zhou et al. 2024): fraction of
  variance per frequency of embeddings, unembeddings or activations over numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr

from arithinterp.errors import MethodError, SiteError
from arithinterp.methods._common import make_meta
from arithinterp.models import Model, Site
from arithinterp.results import Result, ResultMeta, resultclass

# -- bases -------------------------------------------------------------------------------


def fourier_basis(p: int) -> torch.Tensor:
    """Orthonormal real Fourier basis over ``n = 0..p-1``, rows ``[p, p]`` (float64).

    Row 0 is the constant; rows ``2k-1, 2k`` are ``cos(2πkn/p)``, ``sin(2πkn/p)``
    for ``k = 1..⌊p/2⌋`` (for even ``p`` the last row is ``cos`` at ``k = p/2``
    alone, its ``sin`` being zero). Row labels: :func:`fourier_basis_labels`.
    """
    if p < 2:
        raise MethodError(f"p must be >= 2, got {p}")
    n = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, p // 2 + 1):
        rows.append(torch.cos(2 * math.pi * k * n / p))
        if 2 * k != p:
            rows.append(torch.sin(2 * math.pi * k * n / p))
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True)


def fourier_basis_labels(p: int) -> list[str]:
    """Labels of :func:`fourier_basis` rows: ``const, cos 1, sin 1, ...``."""
    labels = ["const"]
    for k in range(1, p // 2 + 1):
        labels += [f"cos {k}"] if 2 * k == p else [f"cos {k}", f"sin {k}"]
    return labels


def basis_freqs(p: int) -> np.ndarray:
    """The frequency ``k`` of each :func:`fourier_basis` row (0 for the constant)."""
    return np.array([0] + [k for k in range(1, p // 2 + 1) for _ in range(1 if 2 * k == p else 2)])


DIGIT_BASIS_LABELS: tuple[str, ...] = ("const", "cos T10", "sin T10", "cos T5", "sin T5", "(-1)^n")


def digit_basis() -> torch.Tensor:
    """Orthonormal digit Fourier basis over ``n = 0..9``, rows ``[6, 10]`` (float64).

    Rows (labels :data:`DIGIT_BASIS_LABELS`): constant, ``cos/sin(2πn/10)``,
    ``cos/sin(2πn/5)``, ``(-1)^n`` (Bai et al. 2025, the "pentagonal prism").
    """
    n = torch.arange(10, dtype=torch.float64)
    rows = torch.stack([
        torch.ones(10, dtype=torch.float64),
        torch.cos(2 * math.pi * n / 10),
        torch.sin(2 * math.pi * n / 10),
        torch.cos(2 * math.pi * n / 5),
        torch.sin(2 * math.pi * n / 5),
        (-1.0) ** n,
    ])
    # These DFT rows are already mutually orthogonal; QR only normalises them (and
    # would orthogonalise them if a row were ever added that is not).
    q, r = torch.linalg.qr(rows.T)
    return (q * torch.sign(torch.diagonal(r))).T


# -- key frequencies ------------------------------------------------------------------------


def modadd_tokens(p: int = 113, equals: int | None = None) -> torch.Tensor:
    """Tokens ``[a, b, "="]`` for every pair, shape ``[p, p, 3]`` (``a`` major).

    ``equals`` is the id of ``"="`` (default ``p``, the zoo mod-p tokenizer)."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    eq = torch.full_like(a, p if equals is None else equals)
    return torch.stack([a, b, eq], dim=-1)


def _grid_activations(model: Model, site: Site, tokens: torch.Tensor) -> torch.Tensor:
    """Activations of ``site`` (fixed position) over a token grid, ``[*grid, d]`` float64."""
    if site.kind != "pattern" and site.pos is None:
        raise SiteError(f"{site.label} needs a position (e.g. pos=-1) for a spectrum over operands")
    grid = tokens.shape[:-1]
    _, cache = model.run_with_cache(tokens.reshape(-1, tokens.shape[-1]), [site])
    return cache[site].detach().double().reshape(*grid, -1).cpu()


def block_fractions(acts: torch.Tensor) -> torch.Tensor:
    """Fraction of each column's variance in the 2D block ``{const, cos k, sin k}^2``.

    ``acts``: ``[p, p, n]`` over operands ``(a, b)``. Returns ``[n, ⌊p/2⌋]`` for
    ``k = 1..⌊p/2⌋``; the pure-constant cell is excluded (the data is centred).
    """
    p = acts.shape[0]
    basis = fourier_basis(p)
    centred = acts - acts.mean(dim=(0, 1), keepdim=True)
    coef = torch.einsum("jb,abn->ajn", basis, torch.einsum("ia,abn->ibn", basis, centred))
    power = coef.pow(2)
    total = power.sum(dim=(0, 1))
    # Pool the rows of each frequency: grouped[ki, kj] = power summed over rows of freq ki, kj.
    freqs = torch.as_tensor(basis_freqs(p))
    n_k = p // 2 + 1
    grouped = torch.zeros(n_k, p, power.shape[-1], dtype=power.dtype).index_add_(0, freqs, power)
    grouped = torch.zeros(n_k, n_k, power.shape[-1], dtype=power.dtype).index_add_(1, freqs, grouped)
    k = torch.arange(1, n_k)
    block = grouped[k, k] + grouped[0, k] + grouped[k, 0]
    frac = block.T / total.clamp_min(1e-30).unsqueeze(-1)
    return torch.where(total.unsqueeze(-1) > 1e-20, frac, torch.zeros_like(frac))


@resultclass
class KeyFrequencyResult(Result):
    """Per-neuron (or per-head) best frequency and the fraction of variance its 2D block explains.

    ``values``: dims ``(neuron,)`` (:func:`key_frequencies`) or ``(layer, head)``
    (:func:`head_key_frequencies`), the explained fraction. Extras: ``key_freq``
    (the best ``k``) and ``clustered`` (fraction ≥ ``threshold``). The model's key
    frequencies (:attr:`key_freqs`) are those with clustered neurons.
    """

    threshold: float = 0.85
    metric_name = "explained"

    @property
    def counts(self) -> dict[int, int]:
        """Clustered neurons per frequency, largest first."""
        freq = self.extras["key_freq"].values[self.extras["clustered"].values]
        ks, n = np.unique(freq, return_counts=True)
        return {int(k): int(c) for k, c in sorted(zip(ks, n), key=lambda kc: -kc[1])}

    @property
    def key_freqs(self) -> list[int]:
        """Frequencies with at least one clustered neuron, ascending."""
        return sorted(self.counts)

    @property
    def clustered_fraction(self) -> float:
        """Fraction of neurons whose explained fraction is at least ``threshold``."""
        return float(self.extras["clustered"].values.mean())

    def plot(self) -> go.Figure:
        if "head" in self.values.dims:
            return self._head_plot()
        frame = self.to_frame()
        fig = go.Figure(
            go.Scatter(
                x=frame["key_freq"],
                y=frame[self.metric],
                mode="markers",
                marker={"color": frame["clustered"].astype(int), "colorscale": "Viridis", "size": 5},
                # one label per unit, whatever the unit (neurons, or heads by layer)
                text=[" ".join(f"{d} {v}" for d, v in zip(self.dims, row))
                      for row in frame[list(self.dims)].itertuples(index=False)],
                hovertemplate="%{text}<br>k = %{x}<br>explained %{y:.3f}<extra></extra>",
            )
        )
        fig.add_hline(y=self.threshold, line_dash="dash")
        fig.update_layout(
            title=f"key frequencies: {self.meta.model} (key k: {self.key_freqs})",
            xaxis_title="best frequency k",
            yaxis_title="fraction of variance in its 3×3 block",
        )
        return fig

    def _head_plot(self) -> go.Figure:
        """Heads (:func:`~arithinterp.methods.head_key_frequencies`): explained share per layer x head."""
        v = self.values.transpose("layer", "head")
        freq = self.extras["key_freq"].transpose("layer", "head").values
        fig = go.Figure(go.Heatmap(
            z=v.values, x=[f"H{h}" for h in v.coords["head"].values], y=[f"L{la}" for la in v.coords["layer"].values],
            text=[[f"k={k}" for k in row] for row in freq], texttemplate="%{text}", zmin=0, zmax=1,
            colorscale="Viridis", colorbar={"title": "explained"},
            hovertemplate="%{y}%{x}<br>%{text}<br>explained %{z:.3f}<extra></extra>",
        ))
        fig.update_layout(title="heads: share of the write's variance in the best frequency's 2D block",
                          yaxis={"autorange": "reversed"})
        return fig

    @classmethod
    def example(cls) -> KeyFrequencyResult:
        rng = np.random.default_rng(0)
        explained = rng.uniform(0.5, 1.0, 8)
        coords = {"neuron": np.arange(8)}
        values = xr.DataArray(explained, dims=("neuron",), coords=coords)
        extras = {
            "key_freq": xr.DataArray(rng.integers(1, 6, 8), dims=("neuron",), coords=coords),
            "clustered": xr.DataArray(explained >= 0.85, dims=("neuron",), coords=coords),
        }
        meta = ResultMeta(method="key_frequencies", model="synthetic", seed=0, options={"p": 11})
        return cls(values=values, meta=meta, extras=extras, threshold=0.85)


def key_frequencies_from_activations(
    acts: torch.Tensor, *, threshold: float = 0.85, meta: ResultMeta | None = None
) -> KeyFrequencyResult:
    """:func:`key_frequencies` on given activations ``[p, p, n_neurons]`` over ``(a, b)``."""
    if acts.ndim != 3 or acts.shape[0] != acts.shape[1]:
        raise MethodError(f"activations must be [p, p, neuron], got {tuple(acts.shape)}")
    frac = block_fractions(acts.double())
    explained, best = frac.max(dim=-1)
    coords = {"neuron": np.arange(acts.shape[-1])}
    values = xr.DataArray(explained.numpy(), dims=("neuron",), coords=coords)
    extras = {
        "key_freq": xr.DataArray(best.numpy() + 1, dims=("neuron",), coords=coords),
        "clustered": xr.DataArray(explained.numpy() >= threshold, dims=("neuron",), coords=coords),
    }
    if meta is None:
        meta = make_meta("key_frequencies", None, options={"p": acts.shape[0], "threshold": threshold})
    return KeyFrequencyResult(values=values, meta=meta, extras=extras, threshold=threshold)


def key_frequencies(
    model: Model, *, p: int = 113, threshold: float = 0.85, layer: int | None = None
) -> KeyFrequencyResult:
    """Key frequencies of a mod-``p`` addition model (Nanda et al. 2023).

    The MLP activations (``mlp_post`` of ``layer``, default the last, at the
    ``"="`` position) over all ``p²`` inputs ``[a, b, "="]`` are centred per neuron
    and 2D-Fourier transformed over ``(a, b)``; each neuron gets the ``k`` whose
    block ``{const, cos k, sin k}²`` (without the pure-constant cell) explains
    the largest fraction of its variance.
    """
    if not 0 < threshold <= 1:
        raise MethodError(f"threshold must be in (0, 1], got {threshold}")
    layer = model.shape.n_layers - 1 if layer is None else layer
    acts = _grid_activations(model, Site("mlp_post", layer, pos=-1), modadd_tokens(p))
    meta = make_meta("key_frequencies", model, options={"p": p, "threshold": threshold, "layer": layer})
    return key_frequencies_from_activations(acts, threshold=threshold, meta=meta)


def head_key_frequencies(
    writes: Mapping[int, torch.Tensor],
    *,
    threshold: float = 0.85,
    model: Model | None = None,
    site: str = "attn_head write (z @ W_O), last position",
) -> KeyFrequencyResult:
    """Key frequencies of attention heads: per head, the ``k`` whose 2D block explains most of
    the variance of what it writes, pooled over ``d_model``.

    Each ``d_model`` column's block fraction (:func:`block_fractions`) is weighted by that
    column's variance, so the pooled fraction is the share of the head write's total variance
    in the block ``{const, cos k, sin k}²`` over the operands.

    Args:
        writes: ``{layer: [p, p, head, d_model]}`` over operands ``(a, b)``, e.g.
            :func:`~arithinterp.methods.grid.grid_activations` of ``Site("attn_head", layer,
            pos=-1)`` with ``heads="write"``.
        threshold: a head is ``clustered`` when its explained fraction is at least this.
        model: the model the writes came from (recorded in ``meta``).
        site: what the writes are (recorded in ``meta.options``).

    Returns:
        :class:`KeyFrequencyResult` with dims ``(layer, head)``.
    """
    if not 0 < threshold <= 1:
        raise MethodError(f"threshold must be in (0, 1], got {threshold}")
    if not writes:
        raise MethodError("head_key_frequencies needs the writes of at least one layer")
    layers = sorted(writes)
    shapes = {tuple(writes[layer].shape) for layer in layers}
    first = next(iter(shapes))
    if len(shapes) != 1 or len(first) != 4 or first[0] != first[1]:
        raise MethodError(f"writes must be [p, p, head, d_model], one shape for every layer; got {sorted(shapes)}")
    side, n_heads = first[0], first[2]
    explained = np.zeros((len(layers), n_heads))
    best = np.zeros((len(layers), n_heads), dtype=np.int64)
    for i, layer in enumerate(layers):
        for h in range(n_heads):
            acts = writes[layer][:, :, h]  # [p, p, d_model]
            var = (acts - acts.mean(dim=(0, 1), keepdim=True)).pow(2).sum(dim=(0, 1))
            frac = block_fractions(acts)  # [d_model, k]
            pooled = (frac * var[:, None]).sum(0) / var.sum().clamp_min(1e-30)
            explained[i, h] = float(pooled.max())
            best[i, h] = int(pooled.argmax()) + 1
    coords = {"layer": np.array(layers), "head": np.arange(n_heads)}
    values = xr.DataArray(explained, dims=("layer", "head"), coords=coords)
    extras = {"key_freq": xr.DataArray(best, dims=("layer", "head"), coords=coords),
              "clustered": xr.DataArray(explained >= threshold, dims=("layer", "head"), coords=coords)}
    meta = make_meta("key_frequencies", model, options={"p": side, "threshold": threshold, "site": site})
    return KeyFrequencyResult(values=values, meta=meta, extras=extras, threshold=threshold)


# -- spectra --------------------------------------------------------------------------------


def gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative values (0 = uniform, → 1 = one non-zero)."""
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * x) / (n * total))


@resultclass
class SpectrumResult(Result):
    """Fraction of variance per Fourier frequency over numbers.

    ``values``: dims ``(freq,)``, ``k = 1..⌊N/2⌋``, coordinate ``period = N/k``.
    ``gini``: Gini coefficient of the per-frequency norms (Nanda et al.'s sparsity).
    """

    gini: float = 0.0
    metric_name = "variance_fraction"

    def top_periods(self, k: int = 5) -> list[tuple[float, float]]:
        """``(period, fraction)`` of the ``k`` strongest frequencies."""
        order = np.argsort(-self.values.values)[:k]
        periods = self.values.coords["period"].values
        return [(float(periods[i]), float(self.values.values[i])) for i in order]

    def plot(self) -> go.Figure:
        frame = self.to_frame()
        fig = go.Figure(
            go.Bar(
                x=frame["freq"],
                y=frame[self.metric],
                customdata=frame["period"],
                hovertemplate="k = %{x} (period %{customdata:.2f})<br>%{y:.3f}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"Fourier spectrum: {self.meta.model} (Gini {self.gini:.2f})",
            xaxis_title="frequency k",
            yaxis_title="fraction of variance",
        )
        return fig

    @classmethod
    def example(cls) -> SpectrumResult:
        frac = np.array([0.05, 0.7, 0.05, 0.1, 0.1])
        values = xr.DataArray(
            frac, dims=("freq",), coords={"freq": np.arange(1, 6), "period": ("freq", 11 / np.arange(1, 6))}
        )
        return cls(values=values, meta=ResultMeta(method="fourier_spectrum", model="synthetic"), gini=gini(frac))


def _spectrum(power: torch.Tensor, n: int, meta: ResultMeta) -> SpectrumResult:
    frac = (power / power.sum().clamp_min(1e-30)).numpy()
    k = np.arange(1, n // 2 + 1)
    values = xr.DataArray(frac, dims=("freq",), coords={"freq": k, "period": ("freq", n / k)})
    return SpectrumResult(values=values, meta=meta, gini=gini(np.sqrt(power.numpy())))


def fourier_spectrum(values: torch.Tensor | np.ndarray, *, meta: ResultMeta | None = None) -> SpectrumResult:
    """Fraction of (centred) variance per frequency of ``values`` over numbers ``[N]`` or ``[N, d]``."""
    x = torch.as_tensor(values).detach().double().cpu()
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 2:
        raise MethodError(f"values must be [N] or [N, d] with N >= 2, got {tuple(x.shape)}")
    n = x.shape[0]
    coef = fourier_basis(n) @ (x - x.mean(dim=0))
    row_power = coef.pow(2).sum(dim=1)
    freqs = torch.as_tensor(basis_freqs(n))
    power = torch.zeros(n // 2 + 1, dtype=torch.float64).index_add_(0, freqs, row_power)[1:]
    meta = meta or make_meta("fourier_spectrum", None, options={"n": n})
    return _spectrum(power, n, meta)


def embedding_spectrum(
    model: Model, numbers: Sequence[int], *, matrix: Literal["W_E", "W_U"] = "W_E"
) -> SpectrumResult:
    """Spectrum of the embedding rows (or unembedding columns) of the number tokens ``numbers``
    (token ids, in numeric order)."""
    if matrix not in ("W_E", "W_U"):
        raise MethodError(f"matrix must be 'W_E' or 'W_U', got {matrix!r}")
    w = model.weights()
    ids = torch.as_tensor(list(numbers))
    rows = w.W_E[ids] if matrix == "W_E" else w.W_U[:, ids].T
    meta = make_meta("embedding_spectrum", model, options={"matrix": matrix, "n": len(ids)})
    return fourier_spectrum(rows, meta=meta)


def activation_spectrum(model: Model, site: Site, tokens: torch.Tensor) -> SpectrumResult:
    """Spectrum of ``site``'s activations over operand values.

    ``tokens``: ``[N, seq]`` (one prompt per value of ``a``: a 1D spectrum over
    ``a``) or ``[N, N, seq]`` (a grid over ``(a, b)``: per ``k``, the variance in
    the 2D block ``{const, cos k, sin k}²``, pooled over the site's units).
    """
    acts = _grid_activations(model, site, tokens)
    meta = make_meta("activation_spectrum", model, options={"site": site.label, "grid": list(tokens.shape[:-1])})
    if acts.ndim == 2:
        return fourier_spectrum(acts, meta=meta)
    if acts.ndim != 3 or acts.shape[0] != acts.shape[1]:
        raise MethodError(f"tokens must be [N, seq] or [N, N, seq], got {tuple(tokens.shape)}")
    centred = acts - acts.mean(dim=(0, 1), keepdim=True)
    total = centred.pow(2).sum(dim=(0, 1))
    power = (block_fractions(acts) * total.unsqueeze(-1)).sum(dim=0)
    n = acts.shape[0]
    frac = power / total.sum().clamp_min(1e-30)
    k = np.arange(1, n // 2 + 1)
    values = xr.DataArray(frac.numpy(), dims=("freq",), coords={"freq": k, "period": ("freq", n / k)})
    return SpectrumResult(values=values, meta=meta, gini=gini(np.sqrt(power.numpy())))
