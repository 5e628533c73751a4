"""The gradient passes of attribution patching, and the rules each method changes them with.

:func:`gradient_passes` is shared by node attribution
(:mod:`arithinterp.methods.attribution`) and edge attribution
(:mod:`arithinterp.methods.edge_attribution`). What each ``method`` does to it:

- ``"atp"``: the gradient of the metric at the target run (Syed, Rager & Conmy 2023).
- ``"ig"``: EAP-IG on the inputs (Hanna, Pezzelle & Belinkov 2024): the gradient is
  averaged over ``m = ig_steps`` points ``x_target + (k/m)(x_source - x_target)``,
  ``k = 0..m-1``, of the input embeddings.
- ``"ig_activations"``: integrated gradients on each activation (Marks et al. 2024;
  MIB's ``ig-activations``): for each swept site, the run is repeated with *that*
  site set to ``a_target + (k/m)(a_source - a_target)`` (everything downstream
  recomputed), and the gradient at the site is averaged over ``k = 0..m-1``. One
  extra set of ``m - 1`` backward passes per swept layer.
- ``"atp_star"``: AtP* (Kramár et al. 2024): AtP plus the QK fix for query and key
  sites (:func:`qk_fix`; the attention softmax is recomputed exactly with the patched
  query or key, and only the pattern's effect is linearised) and GradDrop
  (:func:`graddrop`) as an unsigned score against cancellation.
- ``"relp"``: relevance patching (Rezaei Jafari et al. 2025): the gradient of a
  replacement model with LRP's propagation rules (LN-rule, identity rule through
  the activation, half rule through gates, AH-rule: attention weights constant),
  see :mod:`arithinterp.models.replacement`.

``freeze_norm=True`` holds every normalisation's scale at its value on the run the
gradient is taken at (for ``relp`` it is the LN-rule; ``relp`` with
``freeze_norm=False`` keeps the other rules only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from arithinterp.errors import MethodError
from arithinterp.methods.contrast import Direction
from arithinterp.methods.metrics import MetricFn, PairBatch
from arithinterp.models import Model, Site
from arithinterp.models.functional import FunctionalTransformer
from arithinterp.models.replacement import ReplacementBackend, Rules, check_rules, replacement_model

__all__ = [
    "METHODS",
    "RECOMMENDED",
    "RECOMMENDED_IG_STEPS",
    "RECOMMENDED_LABEL",
    "AttributionMethod",
    "Passes",
    "gradient_passes",
    "graddrop_layers",
    "qk_fix",
    "rules_for",
]

AttributionMethod = Literal["atp", "atp_star", "ig", "ig_activations", "relp"]
METHODS: tuple[str, ...] = get_args(AttributionMethod)
_INPUT = Site("embed")

#: ``(method, freeze_norm)`` best calibrated against exact patching on the shipped zoo and the
#: planted decoy (``docs/methods/attribution.md``); the report's ``atp`` column uses it.
RECOMMENDED: tuple[AttributionMethod, bool] = ("ig_activations", True)
RECOMMENDED_IG_STEPS = 5
RECOMMENDED_LABEL = "IG on activations, 5 steps, frozen norms"


def rules_for(method: str, freeze_norm: bool) -> Rules:
    """The backward-pass rules of ``method`` (:class:`~arithinterp.models.replacement.Rules`)."""
    relp = method == "relp"
    return Rules(freeze_norm=bool(freeze_norm), identity_act=relp, half_gate=relp, constant_pattern=relp)


def check_method(model: Model, method: str, freeze_norm: bool) -> None:
    """``MethodError`` (naming the layer) when ``model`` has no rule ``method`` needs; no pass runs."""
    rules = rules_for(method, freeze_norm)
    if not rules.plain:
        check_rules(model, rules, f"method={method!r}, freeze_norm={freeze_norm}")


@dataclass(frozen=True)
class Passes:
    """What one batch's gradient passes give: per-site activations of both runs,
    the (path-averaged) gradient on the target run, and per-pair metric values.

    ``grad_model``, ``tokens`` and ``scalar`` are what further gradient passes of the
    same target run need (AtP*'s GradDrop)."""

    source: dict[Site, torch.Tensor]
    target: dict[Site, torch.Tensor]
    grad: dict[Site, torch.Tensor]
    source_scores: torch.Tensor
    target_scores: torch.Tensor
    grad_model: Model | None = None
    tokens: torch.Tensor | None = None
    scalar: Callable[[torch.Tensor], torch.Tensor] | None = None


def gradient_passes(model: Model, part: PairBatch, sites: Sequence[Site], metric_fn: MetricFn,
                    direction: Direction, method: AttributionMethod, ig_steps: int, *,
                    freeze_norm: bool = False, integrate: Sequence[Site] | None = None) -> Passes:
    """One backward pass of the target run (more for IG) and one forward pass of the source.

    ``sites`` are whole sites; the metric is summed over pairs so the gradient
    for pair ``i`` is the gradient of pair ``i``'s own metric. ``integrate``: for
    ``ig_activations``, the sites whose gradients are integrated (default: all).
    """
    source_tokens, target_tokens = (part.clean, part.corrupt) if direction == "denoise" else (part.corrupt, part.clean)
    sites = list(dict.fromkeys([*sites, _INPUT] if method == "ig" else sites))
    grad_model = replacement_model(model, rules_for(method, freeze_norm), f"method={method!r}")
    scores: dict[str, torch.Tensor] = {}

    def scalar(logits: torch.Tensor) -> torch.Tensor:
        per_pair = metric_fn(logits[:, part.answer_positions], part.clean_answer, part.corrupt_answer)
        if not per_pair.requires_grad:
            raise MethodError(
                "the metric's value does not depend differentiably on the logits (no gradient); "
                "attribution needs a differentiable metric such as logit_diff or logprob"
            )
        scores.setdefault("target", per_pair.detach().double())
        return per_pair.sum()

    first = grad_model.gradients(target_tokens, sites, scalar)
    target = {s: first.activations[s] for s in sites}
    grad = {s: first.gradients[s].clone() for s in sites}
    logits, cache = model.run_with_cache(source_tokens, sites)
    source = {s: cache[s] for s in sites}
    source_scores = metric_fn(logits[:, part.answer_positions], part.clean_answer, part.corrupt_answer).double()
    if method == "ig":
        x_target, x_source = target[_INPUT], source[_INPUT]
        for k in range(1, ig_steps):
            point = x_target + (k / ig_steps) * (x_source - x_target)
            step = grad_model.gradients(target_tokens, sites, scalar, patches={_INPUT: point})
            for s in sites:
                grad[s] += step.gradients[s]
        grad = {s: g / ig_steps for s, g in grad.items()}
    elif method == "ig_activations":
        for s in (sites if integrate is None else integrate):
            for k in range(1, ig_steps):
                point = target[s] + (k / ig_steps) * (source[s] - target[s])
                grad[s] += grad_model.gradients(target_tokens, [s], scalar, patches={s: point}).gradients[s]
            grad[s] = grad[s] / ig_steps
    return Passes(source, target, grad, source_scores, scores["target"], grad_model, target_tokens, scalar)


# -- AtP*: the QK fix and GradDrop ----------------------------------------------------------------


def functional(model: Model) -> FunctionalTransformer:
    """The functional forward (softmax recomputation of the QK fix), or ``MethodError``."""
    if isinstance(model.backend, ReplacementBackend):
        return model.backend.ft
    check_rules(model, Rules(), "atp_star's QK fix (recomputing attention patterns)")
    return FunctionalTransformer(model.backend.hf_model())


def qk_fix(ft: FunctionalTransformer, kind: str, q: torch.Tensor, k: torch.Tensor, q_source: torch.Tensor,
           k_source: torch.Tensor, grad_pattern: torch.Tensor) -> torch.Tensor:
    """AtP*'s estimate for every query or key of one layer, ``[batch, head, pos]``.

    ``q`` / ``k``: the target run's queries ``[b, pos, head, d_head]`` and keys
    ``[b, pos, kv_head, d_head]`` (before rotary), ``*_source`` the source run's;
    ``grad_pattern``: ``∂metric/∂pattern`` on the target run ``[b, head, q_pos, k_pos]``.
    A query node ``t`` scores ``Σ_s (A'[t, s] - A[t, s]) g[t, s]`` with row ``t``
    recomputed from the patched query (Kramár et al. 2024, eq. 7); a key node ``s``
    scores ``Σ_t Σ_s' (A'_s[t, s'] - A[t, s']) g[t, s']`` with the score of key ``s``
    recomputed for every query ``t`` (eqs. 9-10). Keys shared by a group of query
    heads (GQA) sum over the group.
    """
    positions = torch.arange(q.shape[1], device=q.device)
    rq, rk = ft.rotate(q, positions), ft.rotate(k, positions)
    pattern = ft.pattern(rq, rk, 0)
    if kind == "q":
        patched = ft.pattern(ft.rotate(q_source, positions), rk, 0)
        return ((patched - pattern) * grad_pattern).sum(-1)
    rk_all, rks_all = ft._repeat_kv(rk), ft._repeat_kv(ft.rotate(k_source, positions))
    scores = torch.einsum("bqhd,bkhd->bhqk", rq, rk_all) * ft.scale
    cross = torch.einsum("bqhd,bkhd->bhqk", rq, rks_all) * ft.scale  # query t with patched key s
    n = q.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=q.device)  # [key s, k_pos s']
    # [b, h, s, t, s']: the target scores with column s replaced by the patched key's scores
    mixed = torch.where(eye[:, None, :], cross.transpose(2, 3).unsqueeze(-1), scores.unsqueeze(2))
    future = positions.view(1, -1) > positions.view(-1, 1)  # [t, s']
    mixed = mixed.masked_fill(future, torch.finfo(mixed.dtype).min)
    delta = torch.softmax(mixed, dim=-1) - pattern.unsqueeze(2)
    per_head = (delta * grad_pattern.unsqueeze(2)).sum((-1, -2))  # [b, h, s]
    b, h, _ = per_head.shape
    n_kv = k.shape[2]
    return per_head.view(b, n_kv, h // n_kv, n).sum(2)


def graddrop_layers(passes: Passes, sites: Sequence[Site], n_layers: int):
    """For each layer ``l``: the gradients at ``sites`` with layer ``l``'s residual writes
    (``attn_out`` and ``mlp_out``) cut out of the backward pass (AtP*'s GradDrop).

    Yields ``(l, gradients)``; one backward pass each.
    """
    assert passes.grad_model is not None and passes.tokens is not None and passes.scalar is not None
    cut = _detach
    for layer in range(n_layers):
        patches = {Site("attn_out", layer): cut, Site("mlp_out", layer): cut}
        step = passes.grad_model.gradients(passes.tokens, sites, passes.scalar, patches=patches)
        yield layer, {s: step.gradients[s] for s in sites}


def _detach(activation: torch.Tensor) -> torch.Tensor:
    return activation.detach()
