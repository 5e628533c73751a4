"""Distributed alignment search (DAS) and boundless DAS, with their controls.

DAS (Geiger, Wu et al. 2023; ``shared/METHODS.md`` §17) learns an orthogonal matrix ``R`` over a
site's activation and intervenes on the first ``d`` rotated dims:

    h' = Rᵀ (M R h_source + (1 − M) R h_base),   M = diag(1, ..., 1, 0, ..., 0)  (d ones)

which equals ``h_base + Uᵀ U (h_source − h_base)`` with ``U`` the first ``d`` rows of ``R``, so
only those rows are learned (``torch.nn.utils.parametrizations.orthogonal`` on a ``[d, width]``
matrix keeps them orthonormal). ``R`` is trained with cross-entropy of the intervened run's
answer logits against the causal model's counterfactual answer, by gradient through the model
(either backend; the model's own parameters are frozen), and IIA is measured on held-out pairs.

Boundless DAS (Wu et al. 2023) learns the dimension too: ``M`` becomes a soft mask
``m_i = sigmoid((b − i − ½) / T)`` over a full rotation, with a learned boundary ``b``, the
temperature ``T`` annealed from 1 to 0.01 and a small penalty ``λ b / width`` favouring
narrow subspaces; the learned dimension is ``round(b)`` (at least 1).

Controls, measured on the same held-out pairs: a Haar-random subspace of the same dimension,
the full vector (``d = width``) and the one-dimensional subspace along a ridge probe's
direction for the variable (fitted on the training sources' activations).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
import xarray as xr

from arithinterp.errors import MethodError
from arithinterp.methods._common import make_meta
from arithinterp.methods.interchange import (
    Featurizer,
    InterchangeBatch,
    check_pairs,
    check_site,
    full_swap,
    interchange_batch,
    patched_logits,
    random_basis,
    source_activations,
    successes,
)
from arithinterp.methods.probes import LinearProbe
from arithinterp.models import Model, Site
from arithinterp.results import Result, ResultMeta
from arithinterp.results.base import resultclass
from arithinterp.tasks import PromptPairs, generate
from arithinterp.tasks.causal import CausalModel

__all__ = ["CONTROLS", "DASResult", "das", "probe_direction", "split_pairs"]

#: The interventions a :class:`DASResult` scores, in order.
CONTROLS: tuple[str, ...] = ("das", "random_rotation", "full_vector", "probe_direction")


@resultclass
class DASResult(Result):
    """Held-out IIA of the learned subspace and of the controls.

    ``values``: dim ``metric`` = ``das`` (the learned subspace), ``random_rotation`` (a random
    subspace of the same dimension), ``full_vector`` (the whole activation) and
    ``probe_direction`` (one dim along a probe's direction); NaN where a control was not run.
    Fields: ``variable``, ``site`` (label), ``dim`` (learned or fixed), ``boundless``, ``iia``
    (held-out IIA of the learned subspace), ``iia_train``, ``n_train`` / ``n_test`` (pairs),
    ``basis`` (the learned ``[dim, width]`` orthonormal rows; :attr:`featurizer`).
    """

    metric_name = "iia"
    variable: str = ""
    site: str = ""
    dim: int = 0
    boundless: bool = False
    iia: float = float("nan")
    iia_train: float = float("nan")
    n_train: int = 0
    n_test: int = 0
    basis: list = dataclasses.field(default_factory=list)

    @property
    def featurizer(self) -> Featurizer:
        """The learned subspace (use it as ``subspace=`` of :func:`interchange_intervention`)."""
        return Featurizer(torch.tensor(self.basis, dtype=torch.float32))

    def plot(self) -> go.Figure:
        frame = self.to_frame()
        fig = go.Figure(go.Bar(x=frame["metric"], y=frame[self.metric]))
        return fig.update_layout(title=f"IIA of {self.variable} at {self.site} (held out; DAS dim {self.dim})",
                                 yaxis_title="IIA", yaxis_range=[0, 1])

    @classmethod
    def example(cls) -> DASResult:
        values = xr.DataArray(np.array([0.98, 0.1, 0.2, 0.6]), dims=("metric",), coords={"metric": list(CONTROLS)})
        meta = ResultMeta(method="das", model="synthetic", seed=0)
        return cls(values=values, meta=meta, variable="carry_in_1", site="L1 pre@-3", dim=1, iia=0.98,
                   iia_train=0.99, n_train=8, n_test=4, basis=[[1.0, 0.0, 0.0]])


def split_pairs(pairs: PromptPairs, test_fraction: float) -> tuple[PromptPairs, PromptPairs]:
    """The first ``1 - test_fraction`` of the pairs for training, the rest held out."""
    n_test = max(1, int(round(len(pairs) * test_fraction)))
    if len(pairs) - n_test < 1:
        raise MethodError(f"{len(pairs)} pairs cannot be split into training and held-out pairs")
    return pairs[: len(pairs) - n_test], pairs[len(pairs) - n_test:]


def _default_pairs(causal_model: CausalModel, variable: str, n: int, seed: int) -> tuple[PromptPairs, PromptPairs]:
    spec = causal_model.spec
    train = generate(spec.model_copy(update={"n": n, "seed": seed}))
    test = generate(spec.model_copy(update={"n": max(n // 4, 32), "seed": seed + 1}))
    return causal_model.make_pairs(train, variable, seed=seed), causal_model.make_pairs(test, variable, seed=seed + 1)


class _Rotation(torch.nn.Module):
    """The learned rows ``U`` (``[d, width]``, orthonormal) and, for boundless DAS, the soft mask."""

    def __init__(self, width: int, dim: int, boundless: bool, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        rows = width if boundless else dim
        self.linear = torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(width, rows, bias=False))
        self.boundless = boundless
        self.boundary = torch.nn.Parameter(torch.tensor(1.0)) if boundless else None
        self.temperature = 1.0
        self.register_buffer("index", torch.arange(rows, dtype=torch.float32) + 0.5)

    def mask(self) -> torch.Tensor:
        if self.boundary is None:
            return torch.ones_like(self.index)
        return torch.sigmoid((self.boundary - self.index) / self.temperature)

    def swap(self, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        u = self.linear.weight
        return base + ((source - base) @ u.T * self.mask()) @ u

    def learned_dim(self) -> int:
        if self.boundary is None:
            return int(self.linear.weight.shape[0])
        return int(min(max(round(float(self.boundary.detach())), 1), self.linear.weight.shape[0]))

    def basis(self) -> torch.Tensor:
        return self.linear.weight.detach()[: self.learned_dim()].clone()


def _train(model: Model, batch: InterchangeBatch, site: Site, source: torch.Tensor, rot: _Rotation, *,
           steps: int, lr: float, batch_size: int, penalty: float, seed: int) -> None:
    groups = [{"params": list(rot.linear.parameters()), "lr": lr}]
    if rot.boundary is not None:
        # the boundary counts dims: a step size that can cross the width within the schedule
        groups.append({"params": [rot.boundary], "lr": 4.0 * source.shape[1] / steps})
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(seed)
    width = source.shape[1]
    with model.enabled(requires_grad=False):
        for step in range(steps):
            rot.temperature = float(0.01 ** (step / max(steps - 1, 1)))
            idx = torch.randint(0, len(batch), (min(batch_size, len(batch)),), generator=gen)
            part = batch.take(idx)
            logits = patched_logits(model, part, site, source[idx], rot.swap, grad=True)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), part.target.flatten())
            if rot.boundary is not None:
                loss = loss + penalty * rot.boundary / width
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rot.boundary is not None:
                with torch.no_grad():
                    rot.boundary.clamp_(0.5, float(width))


def probe_direction(activations: torch.Tensor, values: np.ndarray) -> torch.Tensor:
    """The unit direction ``[1, width]`` of a ridge probe of ``values`` on ``activations [n, width]``."""
    probe = LinearProbe("ridge").fit(activations.double(), values.astype(np.float64))
    scale = torch.as_tensor(probe.scale_)
    # Features constant up to float noise (dead neurons) would get huge input-space weights from
    # the standardised fit: they carry nothing, so they get none. (coef_ is in the input space.)
    live = scale > 1e-4 * scale.max()
    coef = torch.where(live, torch.as_tensor(probe.coef_), 0.0).float()
    norm = coef.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise MethodError("the probe found no direction (the variable is constant on the training pairs)")
    return (coef / norm)[None]


def das(
    model: Model,
    causal_model: CausalModel,
    pairs: PromptPairs | None = None,
    *,
    variable: str,
    site: Site,
    dim: int | None = 1,
    n_pairs: int = 1024,
    test_fraction: float = 0.2,
    steps: int = 300,
    lr: float = 0.01,
    batch_size: int = 64,
    penalty: float = 1.0,
    controls: bool = True,
    seed: int = 0,
) -> DASResult:
    """Learn the subspace of ``variable`` at ``site`` that maximises IIA; report held-out IIA.

    Args:
        model: the model.
        causal_model: the task's causal model (:func:`arithinterp.tasks.causal_model`).
        pairs: (base, source) pairs changing the variable, split into training and held-out
            pairs by ``test_fraction``; ``None`` draws ``n_pairs`` training pairs (and a quarter
            as many held out, from another seed) from the causal model's task spec.
        variable: a variable of the causal model.
        site: a :class:`Site` with a position.
        dim: the subspace dimension (DAS); ``None`` learns it (boundless DAS).
        n_pairs: training prompts drawn when ``pairs`` is ``None``.
        test_fraction: the share of ``pairs`` held out.
        steps: Adam steps on the rotation.
        lr: Adam's learning rate.
        batch_size: pairs per step, drawn with replacement.
        penalty: boundless DAS's weight on the boundary (``λ``).
        controls: also score a random subspace, the full vector and the probe direction.
        seed: seeds the pairs, the initial rotation, the batches and the random control.

    Raises:
        MethodError: an unknown variable, a site without a position, ``dim`` above the site's
            width or below 1, pairs that do not change the variable; before any training.
    """
    width = check_site(model, site)
    name = causal_model.resolve(variable)
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= width):
        raise MethodError(f"dim must be an int in 1..{width} (the width of {site.label}) or None (boundless), "
                          f"got {dim!r}")
    for label, value in (("steps", steps), ("batch_size", batch_size), ("n_pairs", n_pairs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MethodError(f"{label} must be a positive int, got {value!r}")
    if not 0 < test_fraction < 1:
        raise MethodError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if pairs is None:
        train_pairs, test_pairs = _default_pairs(causal_model, name, n_pairs, seed)
    else:
        check_pairs(causal_model, pairs, name)
        train_pairs, test_pairs = split_pairs(pairs, test_fraction)
    train = interchange_batch(model, causal_model, train_pairs, name)
    test = interchange_batch(model, causal_model, test_pairs, name)
    start = time.perf_counter()
    src_train, src_test = source_activations(model, train, site), source_activations(model, test, site)
    rot = _Rotation(width, dim or width, dim is None, seed)
    _train(model, train, site, src_train, rot, steps=steps, lr=lr, batch_size=batch_size, penalty=penalty, seed=seed)
    learned = Featurizer(rot.basis())
    scores = dict.fromkeys(CONTROLS, float("nan"))
    scores["das"] = float(successes(model, test, site, src_test, learned.swap).mean())
    iia_train = float(successes(model, train, site, src_train, learned.swap).mean())
    if controls:
        scores.update(_controls(model, causal_model, train_pairs, name, test, site, src_train, src_test,
                                learned.dim, seed))
    values = xr.DataArray(np.array([scores[c] for c in CONTROLS]), dims=("metric",), coords={"metric": list(CONTROLS)})
    options = {"variable": name, "site": site.label, "dim": dim, "steps": steps, "lr": lr, "batch_size": batch_size,
               "penalty": penalty, "n_train": len(train), "n_test": len(test)}
    meta = make_meta("das", model, options=options, seed=seed, dataset_hash=train.dataset_hash,
                     extra={"seconds": time.perf_counter() - start})
    return DASResult(values=values, meta=meta, variable=name, site=site.label, dim=learned.dim,
                     boundless=dim is None, iia=scores["das"], iia_train=iia_train, n_train=len(train),
                     n_test=len(test), basis=learned.basis.tolist())


def _controls(model: Model, causal_model: CausalModel, train_pairs: PromptPairs, name: str, test: InterchangeBatch,
              site: Site, src_train: torch.Tensor, src_test: torch.Tensor, dim: int, seed: int) -> dict[str, Any]:
    width = src_train.shape[1]
    rand = Featurizer(random_basis(width, dim, seed + 1))
    probe = Featurizer(probe_direction(src_train, causal_model.values(train_pairs.corrupt, name)))
    return {
        "random_rotation": float(successes(model, test, site, src_test, rand.swap).mean()),
        "full_vector": float(successes(model, test, site, src_test, full_swap).mean()),
        "probe_direction": float(successes(model, test, site, src_test, probe.swap).mean()),
    }
