"""What an ablated circuit component is replaced with (``ablation=`` of faithfulness and discovery).

A circuit is scored by replacing every component outside it. :func:`ablation_values` builds,
once per call, the replacement of every site a circuit can ablate, for one of five kinds
(``shared/METHODS.md`` §15):

* ``"mean"``: the per-position mean over a reference set (Nikankin et al.);
* ``"zero"``: 0 (a head's ``z``, a neuron's activation, a whole MLP's output);
* ``"resample"``: prompt ``i`` takes the activation of reference prompt ``perm[i]``, a seeded
  permutation of the reference set (never the prompt itself when the reference is the prompts);
  ``n_draws`` permutations, whose scores are averaged;
* ``"counterfactual"``: prompt ``i`` takes the activation of its pair's corrupt prompt (MIB's
  patching ablation);
* ``"optimal"`` (Li & Janson 2024): a constant per component and position that minimises the
  answer's cross-entropy with that component replaced, learned by gradient descent (Adam) on the
  reference set, starting from the mean. Each head, each MLP (and each layer's neuron vector) is
  optimised once, with it alone replaced, and the constants are reused for every circuit, as MIB
  does with precomputed optimal ablations.

Heads are replaced at their ``z``; a layer whose every head is ablated keeps the attention output
bias for ``zero`` and ``optimal`` (the bias is no head's), and is replaced at ``attn_out`` for the
kinds that are linear in the activations (``mean``, ``resample``, ``counterfactual``), which is the
same thing as replacing every head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from arithinterp.errors import MethodError, TokenizationError
from arithinterp.models import Model, Site

__all__ = [
    "CIRCUIT_ABLATIONS",
    "AblationValues",
    "CircuitAblation",
    "ablation_values",
    "check_ablation",
    "check_reference",
    "resample_draws",
    "site_means",
]

CircuitAblation = Literal["mean", "zero", "resample", "counterfactual", "optimal"]
CIRCUIT_ABLATIONS: tuple[str, ...] = get_args(CircuitAblation)

#: Adam steps and learning rate (relative to the component's activation scale) of ``"optimal"``.
OPTIMAL_STEPS = 60
OPTIMAL_LR = 0.05


def check_ablation(ablation: str, *, n_draws: int = 1, has_corrupt: bool = True,
                   reference_size: int | None = None) -> None:
    """Refuse an ablation this call cannot run, before any forward pass (:class:`MethodError`)."""
    if ablation not in CIRCUIT_ABLATIONS:
        raise MethodError(f"unknown ablation {ablation!r}; valid: {', '.join(CIRCUIT_ABLATIONS)}")
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
        raise MethodError(f"n_draws must be an int >= 1, got {n_draws!r}")
    if ablation == "counterfactual" and not has_corrupt:
        raise MethodError("ablation='counterfactual' takes each prompt's activations from its pair's corrupt "
                          "prompt: pass clean/corrupt pairs (PromptPairs) instead of a PromptSet")
    if reference_size == 0:
        raise MethodError("the reference set is empty; pass prompts to take the ablation's activations from, "
                          "or reference=None to use the scored prompts themselves")


def check_reference(tokens: torch.Tensor, reference: torch.Tensor) -> None:
    if reference.ndim != 2 or reference.shape[0] == 0:
        raise MethodError(f"reference tokens must be a non-empty [batch, pos], got {tuple(reference.shape)}")
    if reference.shape[1] != tokens.shape[1]:
        raise TokenizationError(
            f"reference prompts have {reference.shape[1]} tokens but the ablated prompts {tokens.shape[1]}; "
            "means and resamples are taken per position, so both need one length"
        )


def site_means(model: Model, sites: Sequence[Site], reference_tokens: torch.Tensor, *,
               batch_size: int = 64) -> dict[Site, torch.Tensor]:
    """The mean of each site's activation over ``reference_tokens``, per position.

    Each mean has the site's activation shape without the batch dim (accumulated in
    float64, returned in the model's dtype).
    """
    sums: dict[Site, torch.Tensor] = {}
    n = reference_tokens.shape[0]
    for start in range(0, n, batch_size):
        _, cache = model.run_with_cache(reference_tokens[start:start + batch_size], sites)
        for site in sites:
            part = cache[site].double().sum(0)
            sums[site] = part if site not in sums else sums[site] + part
    return {site: (total / n).to(model.dtype) for site, total in sums.items()}


def resample_draws(n: int, n_reference: int, *, n_draws: int, seed: int, self_reference: bool) -> torch.Tensor:
    """``[n_draws, n]`` reference rows: draw ``d`` is a permutation seeded by ``seed + d``.

    With ``self_reference`` (the reference is the prompts) a prompt never draws itself: a fixed
    point of the permutation is swapped with its neighbour's draw. A reference smaller than the
    prompts is cycled (the permutation is repeated).
    """
    if self_reference and n < 2:
        raise MethodError("resampling from the prompts themselves needs at least 2 prompts")
    rows = []
    for d in range(n_draws):
        gen = torch.Generator().manual_seed(int(seed) + d)
        perm = torch.randperm(n_reference, generator=gen)
        perm = perm.repeat(-(-n // n_reference))[:n].clone()
        if self_reference:
            for i in range(n):
                if int(perm[i]) == i:
                    j = (i + 1) % n
                    perm[i], perm[j] = perm[j].clone(), perm[i].clone()
        rows.append(perm)
    return torch.stack(rows)


@dataclass
class AblationValues:
    """The replacement of every ablatable site, for rows of the scored prompts.

    ``fixed``: one value per site, ``[pos, ...]`` (mean, zero, optimal); ``acts``: per-source-row
    activations ``[n_source, pos, ...]`` and ``draws`` ``[n_draws, n_prompts]``, the source row of
    each prompt in each draw (resample, counterfactual).
    """

    kind: str
    fixed: dict[Site, torch.Tensor]
    acts: dict[Site, torch.Tensor] | None = None
    draws: torch.Tensor | None = None

    @property
    def n_draws(self) -> int:
        return 1 if self.draws is None else int(self.draws.shape[0])

    def values(self, draw: int, start: int, stop: int) -> dict[Site, torch.Tensor]:
        """The replacements of prompts ``start:stop`` in draw ``draw``."""
        if self.acts is None or self.draws is None:
            return self.fixed
        rows = self.draws[draw, start:stop]
        return {site: act[rows] for site, act in self.acts.items()}


@dataclass
class AnswerData:
    """Teacher-forced sequences and the answer tokens they are scored on (for ``"optimal"``)."""

    seqs: torch.Tensor
    answers: torch.Tensor
    positions: torch.Tensor


def ablatable_sites(model: Model, kind: str, *, neurons: bool) -> list[Site]:
    """The whole sites a circuit's ablation replaces (``attn_out`` only for the linear kinds)."""
    kinds = ["attn_head", "mlp_out"] + (["mlp_post"] if neurons else [])
    if kind in ("mean", "resample", "counterfactual"):
        kinds.append("attn_out")
    return [Site(k, layer) for layer in range(model.shape.n_layers) for k in kinds]


def ablation_values(model: Model, kind: str, tokens: torch.Tensor, *, reference: torch.Tensor,
                    self_reference: bool, corrupt: torch.Tensor | None = None, neurons: bool = True,
                    n_draws: int = 1, seed: int = 0, batch_size: int = 64,
                    answers: AnswerData | None = None) -> AblationValues:
    """The replacements of ``kind`` for ``tokens`` (one call, before scoring any circuit)."""
    sites = ablatable_sites(model, kind, neurons=neurons)
    device = model.device
    if kind == "counterfactual":
        if corrupt is None:
            raise MethodError("ablation='counterfactual' needs the pairs' corrupt prompts")
        check_reference(tokens, corrupt)
        return AblationValues(kind, {}, _cached(model, sites, corrupt.to(device), batch_size),
                              torch.arange(tokens.shape[0]).unsqueeze(0))
    check_reference(tokens, reference)
    if kind == "resample":
        draws = resample_draws(tokens.shape[0], reference.shape[0], n_draws=n_draws, seed=seed,
                               self_reference=self_reference)
        return AblationValues(kind, {}, _cached(model, sites, reference.to(device), batch_size), draws)
    if kind == "zero":
        _, cache = model.run_with_cache(tokens[:1].to(device), sites)
        return AblationValues(kind, {s: torch.zeros_like(cache[s][0]) for s in sites})
    means = site_means(model, sites, reference.to(device), batch_size=batch_size)
    if kind == "mean":
        return AblationValues(kind, means)
    if answers is None:
        raise MethodError("ablation='optimal' needs the reference prompts' answers to learn its constants")
    return AblationValues(kind, optimal_constants(model, means, answers, neurons=neurons, batch_size=batch_size))


def _cached(model: Model, sites: list[Site], tokens: torch.Tensor, batch_size: int) -> dict[Site, torch.Tensor]:
    parts: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[start:start + batch_size], sites)
        for s in sites:
            parts[s].append(cache[s].detach())
    return {s: torch.cat(v) for s, v in parts.items()}


# ---- optimal ablation (Li & Janson 2024) ------------------------------------------------------


def _answer_loss(answers: AnswerData, rows: slice):
    """Mean cross-entropy of the answer tokens (the loss optimal ablation minimises)."""
    target = answers.answers[rows]

    def loss(logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits[:, answers.positions].double(), -1)
        return -logp.gather(-1, target.to(logits.device).unsqueeze(-1)).mean()

    return loss


def optimal_loss(model: Model, site: Site, value: torch.Tensor, answers: AnswerData, *,
                 batch_size: int = 64) -> float:
    """The answer loss with ``site`` replaced by the constant ``value`` (``[pos, ...]``)."""
    total, n = 0.0, answers.seqs.shape[0]
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        logits = model.run_with_patches(answers.seqs[rows].to(model.device), {site: value})
        total += float(_answer_loss(answers, rows)(logits)) * logits.shape[0]
    return total / n


def learn_constant(model: Model, site: Site, init: torch.Tensor, answers: AnswerData, *,
                   steps: int = OPTIMAL_STEPS, batch_size: int = 64) -> tuple[torch.Tensor, float]:
    """The constant that minimises the answer loss with ``site`` replaced by it, and that loss.

    Adam from ``init`` (the mean), full batch; the best constant seen is returned, so the loss is
    never above the mean ablation's.
    """
    param = init.detach().double().clone().requires_grad_(True)
    scale = float(init.double().abs().mean()) + 1e-3
    opt = torch.optim.Adam([param], lr=OPTIMAL_LR * scale)
    best, best_loss = init.detach().clone(), float("inf")
    n = answers.seqs.shape[0]
    for _ in range(steps + 1):
        grad, loss = torch.zeros_like(param), 0.0
        value = param.detach().to(model.dtype)
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            seqs = answers.seqs[rows].to(model.device)
            g = model.gradients(seqs, [site], _answer_loss(answers, rows), {site: value})
            grad += g.gradients[site].double().sum(0).cpu() * (seqs.shape[0] / n)
            loss += float(g.value) * seqs.shape[0] / n
        if loss < best_loss:
            best, best_loss = value.clone(), loss
        opt.zero_grad()
        param.grad = grad
        opt.step()
    return best, best_loss


def optimal_constants(model: Model, means: dict[Site, torch.Tensor], answers: AnswerData, *,
                      neurons: bool, batch_size: int = 64) -> dict[Site, torch.Tensor]:
    """Optimal constants of every head (``z``), MLP output and (``neurons``) layer of neurons."""
    out: dict[Site, torch.Tensor] = {}
    for layer in range(model.shape.n_layers):
        z = means[Site("attn_head", layer)].clone()
        for head in range(z.shape[1]):
            z[:, head], _ = learn_constant(model, Site("attn_head", layer, head=head), z[:, head], answers,
                                           batch_size=batch_size)
        out[Site("attn_head", layer)] = z
        out[Site("mlp_out", layer)], _ = learn_constant(model, Site("mlp_out", layer),
                                                        means[Site("mlp_out", layer)], answers, batch_size=batch_size)
        if neurons:
            out[Site("mlp_post", layer)], _ = learn_constant(model, Site("mlp_post", layer),
                                                             means[Site("mlp_post", layer)], answers,
                                                             batch_size=batch_size)
    return out

