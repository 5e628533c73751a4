"""Edge attribution patching (EAP): which sender → receiver edges carry the difference.

The residual stream is a sum of writes: ``resid_post[L-1] = embed + Σ_heads z_h W_O[h]
+ Σ_layers mlp_out (+ biases)``. Every component reads the sum of the writes
before it. The edge ``u → v`` is the part of ``v``'s input that ``u`` wrote;
patching that edge alone changes the metric by, to first order (Syed, Rager &
Conmy 2023; Hanna, Pezzelle & Belinkov 2024)::

    score(u → v) = Σ_pos (Δ write_u)[pos] · ∂metric/∂(input of v)[pos]

with ``Δ write_u = write_u(source run) - write_u(target run)`` and the gradient
on the target run (``method="ig"``: averaged over interpolated inputs, as in
:mod:`arithinterp.methods.attribution`).

Senders: ``embed`` (``resid_pre`` of layer 0: token + position embeddings),
``attn_head`` (head ``h`` of layer ``l`` writes ``z_h @ W_O[h]``) and
``mlp_out``. Receivers, and the gradient of each one's *own* input: the
residual-stream gradient at a point counts every later reader, so a reader's
share is a difference of consecutive residual gradients,

- ``attn_in`` layer ``l``: ``g(resid_pre[l]) - g(resid_mid[l])`` (what flows
  through the attention block, not its skip connection);
- ``mlp_in`` layer ``l``: ``g(resid_mid[l]) - g(resid_post[l])``;
- ``logits``: ``g(resid_post[L-1])`` (through the final norm and unembedding).

Two sum rules follow and hold exactly (the tests check them): the scores of
all edges out of a sender add up to the sender's node attribution (the
differences telescope to the gradient where it writes), and the scores of all
edges into ``logits`` add up to the node attribution of ``resid_post[L-1]``.

Per-head receivers (``receivers`` ``"q"``, ``"k"``, ``"v"``; Hanna et al.'s and MIB's
``a{l}.h{h}<q>``): every head of layer ``l`` reads ``resid_pre[l]`` through one norm, so the
gradient of head ``h``'s query input is the gradient at its query ``∂m/∂q[h]`` pulled back
through ``W_Q[h]`` and the norm's Jacobian at the run's ``resid_pre[l]`` (the functional
forward, :mod:`arithinterp.models.functional`; with ``freeze_norm`` the norm's scale is held
constant there too). Summed over heads and q / k / v, these are exactly ``attn_in``'s gradient,
so the scores into a layer's q / k / v receivers add up to the score into its ``attn_in`` (the
tests check it). They need a gradient at one point (``method`` ``atp`` / ``atp_star``) and
learned positions (no rotary embedding). Models with a parallel residual (attention and
MLP both read ``resid_pre``) have no ``resid_mid`` and are refused.

Every score is a sum over one pair's positions, and each batch of pairs has its own passes:
no edge needs a pass over the whole dataset, so ``executor=`` shards the batches over workers
as node attribution does (:mod:`arithinterp.methods.attribution`), bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal, get_args

import numpy as np
import torch
import xarray as xr

from arithinterp.distributed.executor import Executor
from arithinterp.errors import ConfigError, MethodError
from arithinterp.methods._common import make_meta
from arithinterp.methods.attribution import attribution_contrast
from arithinterp.methods.attribution_rules import AttributionMethod, functional, gradient_passes
from arithinterp.methods.contrast import Direction, map_parts, package
from arithinterp.methods.metrics import AnswerMode, MetricFn, PairBatch
from arithinterp.methods.registry import MethodSpec, register
from arithinterp.models import Model, Site
from arithinterp.results import Result
from arithinterp.tasks import PromptPairs

__all__ = ["EdgeAttributionResult", "Receiver", "Sender", "edge_attribution_patch"]

Sender = Literal["embed", "attn_head", "mlp_out"]
Receiver = Literal["attn_in", "q", "k", "v", "mlp_in", "logits"]
SENDERS: tuple[str, ...] = get_args(Sender)
RECEIVERS: tuple[str, ...] = get_args(Receiver)
#: The default receivers: one per attention block, MLP and the logits.
LAYER_RECEIVERS: tuple[str, ...] = ("attn_in", "mlp_in", "logits")
#: Per-head receivers: each head's query, key and value input.
HEAD_RECEIVERS: tuple[str, ...] = ("q", "k", "v")


class EdgeAttributionResult(Result):
    """First-order effect of patching each edge alone.

    ``values``: dims ``(component, site)``: the sender (``embed``, ``L0H1``,
    ``MLP0``) and the receiver's input (``ATTN1``, ``MLP1``, ``logits``), with
    coordinates ``comp_layer`` / ``comp_head`` (-1 where not
    applicable) and ``site_layer``. Edges that cannot exist (the sender writes
    after the receiver reads) are NaN. The estimated change of the metric,
    divided by ``clean_mean - corrupt_mean`` when normalised (0 = no effect in
    both directions). Extras ``ci_low`` / ``ci_high``.
    """

    metric_name = "edge_attribution"

    @classmethod
    def example(cls) -> EdgeAttributionResult:
        senders = ["embed", "L0H0", "L0H1", "MLP0"]
        receivers = ["ATTN0", "MLP0", "logits"]
        vals = np.array([[0.1, 0.2, 0.3], [np.nan, 0.4, -0.1], [np.nan, 0.0, 0.5], [np.nan, np.nan, 0.2]])
        coords = {"component": senders, "site": receivers,
                  "comp_layer": ("component", [-1, 0, 0, 0]),
                  "comp_head": ("component", [-1, 0, 1, -1]),
                  "site_layer": ("site", [0, 0, 1])}
        values = xr.DataArray(vals, dims=("component", "site"), coords=coords)
        meta = make_meta("edge_attribution_patch", None,
                         options={"direction": "denoise", "metric": "logit_diff", "normalize": True,
                                  "method": "atp"})
        return cls(values=values, meta=meta, extras={"ci_low": values - 0.1, "ci_high": values + 0.1})


def _edge_layout(model: Model, senders: Sequence[str], receivers: Sequence[str]):
    """Sender and receiver labels, layers, heads and write / read stages.

    A write at stage ``s`` is visible to a read at stage ``r`` iff ``s <= r``:
    embed writes at 0, heads of layer l at 2l+1, MLP l at 2l+2; attention of
    layer l reads at 2l, MLP l at 2l+1, the logits at 2L.
    """
    n_layers, n_heads = model.shape.n_layers, model.shape.n_heads
    send: list[tuple[str, int, int, int]] = []  # label, layer, head, stage
    if "embed" in senders:
        send.append(("embed", -1, -1, 0))
    for layer in range(n_layers):
        if "attn_head" in senders:
            send.extend((Site("attn_head", layer, h).label, layer, h, 2 * layer + 1) for h in range(n_heads))
        if "mlp_out" in senders:
            send.append((Site("mlp_out", layer).label, layer, -1, 2 * layer + 2))
    recv: list[tuple[str, int, int]] = []  # label, layer, stage
    for layer in range(n_layers):
        if "attn_in" in receivers:
            recv.append((Site("attn_out", layer).label, layer, 2 * layer))
        for kind in (k for k in HEAD_RECEIVERS if k in receivers):
            recv.extend((Site(kind, layer, head=h).label, layer, 2 * layer)
                        for h in range(model.shape.heads_of(kind)))
        if "mlp_in" in receivers:
            recv.append((Site("mlp_out", layer).label, layer, 2 * layer + 1))
    if "logits" in receivers:
        recv.append(("logits", n_layers, 2 * n_layers))
    return send, recv


def _receiver_grads(grad: dict[Site, torch.Tensor], n_layers: int, recv,
                    head_grads: dict[Site, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The gradient of each receiver's own input, ``[batch, pos, d_model]``."""
    pre = [grad[Site("resid_pre", layer)] for layer in range(n_layers)]
    mid = [grad[Site("resid_mid", layer)] for layer in range(n_layers)]
    post = pre[1:] + [grad[Site("resid_post", n_layers - 1)]]
    out = []
    for label, layer, _ in recv:
        site = None if label == "logits" else Site.from_label(label)
        if site is None:
            out.append(post[-1])
        elif site.kind == "attn_out":
            out.append(pre[layer] - mid[layer])
        elif site.kind in HEAD_RECEIVERS:
            out.append(head_grads[site])
        else:
            out.append(mid[layer] - post[layer])
    return out


def head_input_grads(ft, layer: int, resid: torch.Tensor, grads: dict[str, torch.Tensor], *,
                     freeze_norm: bool = False) -> dict[Site, torch.Tensor]:
    """The gradient of each head's q / k / v input: ``grads[kind]`` (``∂m/∂kind``,
    ``[batch, pos, head, d_head]``) pulled back through the head's projection and the norm's
    Jacobian at ``resid`` (``resid_pre[layer]`` of the run the gradient was taken on)."""
    blk = ft.blocks[layer]
    x = resid.detach().clone().requires_grad_(True)
    w, b = blk["ln1"]
    if ft.norm == "LN":
        centred = x - x.mean(-1, keepdim=True)
        scale = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + ft.eps)
        normed = centred * (scale.detach() if freeze_norm else scale) * w + (0 if b is None else b)
    else:
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + ft.eps)
        normed = x * (scale.detach() if freeze_norm else scale) * w
    out: dict[Site, torch.Tensor] = {}
    for kind, g in grads.items():
        W, bias = blk[f"W_{kind.upper()}"], blk[f"b_{kind.upper()}"]
        proj = normed @ W.to(x.dtype) + (0 if bias is None else bias.to(x.dtype))
        proj = proj.view(*x.shape[:2], -1, ft.d_head)
        for h in range(proj.shape[2]):
            (gx,) = torch.autograd.grad(proj[:, :, h], x, grad_outputs=g[:, :, h].to(x.dtype), retain_graph=True)
            out[Site(kind, layer, head=h)] = gx.detach()
    return out


def edge_attribution_patch(
    model: Model,
    pairs: PromptPairs | PairBatch,
    *,
    senders: Sequence[Sender] = SENDERS,
    receivers: Sequence[Receiver] = LAYER_RECEIVERS,
    direction: Direction = "denoise",
    metric: str | MetricFn = "logit_diff",
    normalize: bool = True,
    answer: AnswerMode = "multi",
    method: AttributionMethod = "atp",
    freeze_norm: bool = False,
    ig_steps: int = 10,
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
    executor: Executor | None = None,
) -> EdgeAttributionResult:
    """Score every sender → receiver edge with EAP (or EAP-IG), summed over positions.

    Args:
        model: the model (sequential residual: attention, then MLP).
        pairs: clean/corrupt pairs or a tokenized batch.
        senders: which writers: ``embed``, ``attn_head`` (one per head), ``mlp_out``.
        receivers: which readers: ``attn_in`` (a layer's attention block), ``q`` / ``k`` / ``v``
            (each head's query, key, value input: one receiver per head and kind), ``mlp_in``,
            ``logits``.
        direction: ``"denoise"`` (clean edge into the corrupt run) or ``"noise"``.
        metric: ``logit_diff``, ``logprob``, ``prob`` or a differentiable callable.
        normalize: divide by ``clean_mean - corrupt_mean``.
        answer: ``"multi"`` or ``"single"``.
        method: ``"atp"`` (EAP), ``"ig"`` (EAP-IG), ``"ig_activations"`` (the gradient at
            each receiver's residual point integrated along that point's own path),
            ``"relp"`` (LRP rules) or ``"atp_star"`` (here the same as ``"atp"``: the QK
            fix and GradDrop score nodes); see :mod:`arithinterp.methods.attribution_rules`.
        freeze_norm: hold every norm's scale at its value on the gradient's run.
        ig_steps: interpolation points for ``ig`` and ``ig_activations``.
        batch_size: pairs per pass.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        progress: show a progress bar.
        executor: where the batches of pairs run (default: here). Every batch is scored on its
            own, so a :class:`~arithinterp.distributed.RayExecutor` spreads them over Ray workers
            (each holding its own copy of the model); per-pair edge scores merge in pair order
            before the bootstrap, so the result equals the local run bit for bit (at equal
            thread counts).
    """
    senders, receivers = _check_names(senders, SENDERS, "senders"), _check_names(receivers, RECEIVERS, "receivers")
    con = attribution_contrast(model, pairs, direction=direction, metric=metric, normalize=normalize,
                               answer=answer, method=method, ig_steps=ig_steps, batch_size=batch_size,
                               n_boot=n_boot, freeze_norm=freeze_norm)
    n_layers = model.shape.n_layers
    head_kinds = [k for k in HEAD_RECEIVERS if k in receivers]
    _head_receiver_model(model, head_kinds, method)  # refuses what per-head receivers cannot do, before any pass
    send, recv = _edge_layout(model, senders, receivers)
    grad_sites = [Site("resid_pre", layer) for layer in range(n_layers)]
    grad_sites += [Site("resid_mid", layer) for layer in range(n_layers)] + [Site("resid_post", n_layers - 1)]
    writer_sites = [Site("attn_head", layer) for layer in range(n_layers)] if "attn_head" in senders else []
    writer_sites += [Site("mlp_out", layer) for layer in range(n_layers)] if "mlp_out" in senders else []
    grad_sites += [Site(kind, layer) for layer in range(n_layers) for kind in head_kinds]
    model.validate(grad_sites + writer_sites, con.batch.seq_len)
    part_fn = partial(_edge_part, senders=senders, head_kinds=head_kinds, grad_sites=grad_sites,
                      writer_sites=writer_sites, recv=recv, metric_fn=con.metric_fn, direction=direction,
                      method=method, ig_steps=ig_steps, freeze_norm=freeze_norm)
    per_pair, target_scores, source_scores = zip(*map_parts(
        part_fn, list(con.parts(batch_size)), model=model, executor=executor,
        desc=f"edge attribution ({method})", progress=progress))
    scores = torch.cat(per_pair)  # [pair, sender, receiver], in pair order
    target, source = torch.cat(target_scores), torch.cat(source_scores)
    clean, corrupt = (source, target) if direction == "denoise" else (target, source)
    valid = torch.tensor([[s[3] <= r[2] for r in recv] for s in send])
    scores = torch.where(valid, scores, torch.nan)  # a sender that writes after the receiver reads

    coords = {"component": [s[0] for s in send], "site": [r[0] for r in recv],
              "comp_layer": ("component", [s[1] for s in send]),
              "comp_head": ("component", [s[2] for s in send]),
              "site_layer": ("site", [r[1] for r in recv])}
    options = {"senders": list(senders), "receivers": list(receivers), **con.options, "method": method,
               "freeze_norm": freeze_norm, "n_boot": n_boot}
    if method in ("ig", "ig_activations"):
        options["ig_steps"] = ig_steps
    values, extras, meta = package(con, model, "edge_attribution_patch", scores.movedim(0, -1),
                                   dims=("component", "site"), coords=coords,
                                   clean_mean=float(clean.mean()), corrupt_mean=float(corrupt.mean()),
                                   options=options, extra={"baseline": 0.0}, n_boot=n_boot, seed=seed,
                                   scale="effect")
    return EdgeAttributionResult(values=values, meta=meta, extras=extras)


def _edge_part(model: Model, part: PairBatch, *, senders: Sequence[str], head_kinds: list[str],
               grad_sites: list[Site], writer_sites: list[Site], recv, metric_fn: MetricFn,
               direction: Direction, method: str, ig_steps: int, freeze_norm: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of pairs on ``model`` (here, or a worker's copy): per-pair edge scores
    ``[b, sender, receiver]`` and the target and source runs' metric."""
    n_layers = model.shape.n_layers
    ft = _head_receiver_model(model, head_kinds, method)
    W_O = model.weights().W_O.detach() if "attn_head" in senders else None
    passes = gradient_passes(model, part, grad_sites + writer_sites, metric_fn, direction, method, ig_steps,
                             freeze_norm=freeze_norm, integrate=grad_sites)
    head_grads: dict[Site, torch.Tensor] = {}
    for layer in range(n_layers if head_kinds else 0):
        head_grads.update(head_input_grads(ft, layer, passes.target[Site("resid_pre", layer)],
                                           {k: passes.grad[Site(k, layer)] for k in head_kinds},
                                           freeze_norm=freeze_norm))
    scores = _edge_scores(passes, senders, writer_sites, recv, n_layers, W_O, head_grads)
    # one copy to the host per batch, after the passes (a Ray worker's result must be too)
    return scores.cpu(), passes.target_scores.cpu(), passes.source_scores.cpu()


def _head_receiver_model(model: Model, head_kinds: list[str], method: str):
    """The functional forward per-head receivers pull gradients back through (``None`` if none)."""
    if not head_kinds:
        return None
    if method not in ("atp", "atp_star"):
        raise MethodError(f"per-head receivers ({', '.join(head_kinds)}) pull one gradient back through the "
                          f"norm's Jacobian at one run: method 'atp' (or 'atp_star'), not {method!r}")
    ft = functional(model)
    if ft.rotary is not None:
        raise MethodError("per-head receivers need learned positions: with rotary embeddings a head's q / k "
                          "input reaches it through a position-dependent rotation")
    return ft


def _edge_scores(passes, senders: Sequence[str], writer_sites: list[Site], recv, n_layers: int,
                 W_O: torch.Tensor | None, head_grads: dict[Site, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-pair scores of every edge of one batch, ``[b, sender, receiver]`` (float64)."""
    delta = {s: passes.source[s] - passes.target[s] for s in [Site("resid_pre", 0), *writer_sites]}
    columns = []
    for g in _receiver_grads(passes.grad, n_layers, recv, head_grads):
        rows = []
        if "embed" in senders:
            rows.append((delta[Site("resid_pre", 0)] * g).sum((1, 2)).unsqueeze(1))
        for layer in range(n_layers):
            if W_O is not None:
                back = torch.einsum("bpd,hed->bphe", g, W_O[layer].to(g.dtype))
                rows.append((delta[Site("attn_head", layer)] * back).sum((1, 3)))
            if "mlp_out" in senders:
                rows.append((delta[Site("mlp_out", layer)] * g).sum((1, 2)).unsqueeze(1))
        columns.append(torch.cat(rows, 1))
    return torch.stack(columns, -1).double()


def _check_names(given: Sequence[str], valid: tuple[str, ...], what: str) -> tuple[str, ...]:
    given = (given,) if isinstance(given, str) else tuple(given)
    bad = [g for g in given if g not in valid]
    if bad or not given:
        raise ConfigError(f"{what} {bad or 'must not be empty'}: valid {what} are {', '.join(valid)}")
    return given


# -- registration ---------------------------------------------------------------------------------

register(MethodSpec(name="edge_attribution", function=edge_attribution_patch, inputs="pairs",
                    result=EdgeAttributionResult))
