"""Position-aware edge attribution (PEAP; Haklay et al., ACL 2025) over an arithmetic schema.

Plain EAP (:mod:`arithinterp.methods.edge_attribution`) sums every edge over positions. PEAP
keeps them apart: a sender writes at position ``i``; a receiver that reads the residual stream
at its own position (a head's query, an MLP, the logits) reads it at ``i`` too, and a head's key
or value read at key position ``i`` reaches the head's output at every query position ``j >= i``
through its attention. So an edge is (sender, ``i``) → (receiver, ``j``), with ``j = i`` except
for keys and values (cross-position edges). The key / value gradient is split by query position
exactly (with ``A`` the attention pattern, ``g_z`` the gradient at the head's ``z``, ``s`` the
score scale):

    ∂m/∂v_i|_j = A[j, i] g_z[j]
    ∂m/∂k_i|_j = A[j, i] (g_A[j, i] − Σ_i' A[j, i'] g_A[j, i']) s q_j,   g_A[j, i] = g_z[j] · v_i

and summed over ``j`` they are the whole gradient (the tests check it), then pulled back to the
residual stream through the head's projection and the norm's Jacobian at position ``i``.

Prompts of different lengths are aligned by a **schema** (``spans=``): positions are named by the part of the
prompt they hold, and scores are summed over the positions of each part. ``"arithmetic"``
names ``prefix`` (few-shot examples, templates), ``operand_a``, ``operator``, ``operand_b``,
``equals`` (the last prompt token) and ``answer{k}`` (the k-th teacher-forced answer token as
input); ``"positions"`` names each position ``pos{p}`` (one prompt length only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from arithinterp.errors import MethodError
from arithinterp.methods._common import make_meta
from arithinterp.methods.attribution import attribution_contrast
from arithinterp.methods.attribution_rules import functional, gradient_passes
from arithinterp.methods.contrast import Direction, package
from arithinterp.methods.edge_attribution import _edge_layout, head_input_grads
from arithinterp.methods.metrics import AnswerMode, MetricFn, PairBatch
from arithinterp.methods.registry import MethodSpec, register
from arithinterp.models import Model, Site
from arithinterp.results import Result
from arithinterp.tasks import PromptPairs

__all__ = ["PositionEdgeResult", "Schema", "arithmetic_spans", "position_edge_attribution"]

Schema = Literal["arithmetic", "positions"]
SCHEMAS: tuple[str, ...] = get_args(Schema)
_OPERATORS = set("+-*/%×÷")


class PositionEdgeResult(Result):
    """PEAP scores: ``values`` dims ``(component, site)``; a component is a sender at a span
    (``L0H1@operand_a``), a site a receiver at a span (``L1H0.k@equals``: a key read at the
    sender's span and reaching the head's queries at ``equals``). Coordinates: ``sender``,
    ``comp_span``, ``receiver``, ``site_span``. NaN where the edge cannot exist. Extras
    ``ci_low`` / ``ci_high``."""

    metric_name = "edge_attribution"

    @classmethod
    def example(cls) -> PositionEdgeResult:
        comps, sites = ["L0H0@operand_a", "L0H1@operand_b"], ["MLP0@equals", "logits@equals"]
        coords = {"component": comps, "site": sites, "sender": ("component", ["L0H0", "L0H1"]),
                  "comp_span": ("component", ["operand_a", "operand_b"]),
                  "receiver": ("site", ["MLP0", "logits"]), "site_span": ("site", ["equals", "equals"])}
        values = xr.DataArray(np.array([[0.4, 0.1], [0.3, 0.0]]), dims=("component", "site"), coords=coords)
        meta = make_meta("position_edge_attribution", None, options={"spans": "arithmetic", "metric": "logit_diff"})
        return cls(values=values, meta=meta, extras={"ci_low": values - 0.1, "ci_high": values + 0.1})


def _clean(token: str) -> str:
    return token.replace("Ġ", "").replace("▁", "").strip()


def arithmetic_spans(tokens: Sequence[str], n_prompt: int) -> list[str]:
    """The schema name of each position of one prompt (``n_prompt`` prompt tokens, then answer
    tokens): scanning back from the last prompt token (``equals``), digits (``operand_b``), the
    operator, digits (``operand_a``), and everything before (``prefix``)."""
    spans = [f"answer{k}" for k in range(len(tokens) - n_prompt)]
    out = ["prefix"] * n_prompt
    out[n_prompt - 1] = "equals"
    p = n_prompt - 2
    for name in ("operand_b", "operator", "operand_a"):
        start = p
        while p >= 0 and (_clean(tokens[p]).isdigit() if name != "operator" else
                          bool(_clean(tokens[p])) and set(_clean(tokens[p])) <= _OPERATORS and p == start):
            out[p] = name
            p -= 1
        if p == start:
            raise MethodError(f"schema 'arithmetic' expects '... a <op> b =' at the end of the prompt; "
                              f"found no {name} in {list(tokens[:n_prompt])} (use spans='positions')")
    return out + spans


def _spans(model: Model, batch: PairBatch, schema: str) -> list[list[str]]:
    n_prompt = batch.seq_len - (int(batch.answer_positions.shape[0]) - 1 if batch.answer == "multi" else 0)
    if schema == "positions":
        return [[f"pos{p}" for p in range(batch.seq_len)]] * len(batch)
    return [arithmetic_spans(model.tokenizer.convert_ids_to_tokens(row.tolist()), n_prompt) for row in batch.clean]


def _split_by_query(passes, ft, layer: int, kind: str) -> torch.Tensor:
    """``∂m/∂kind`` of layer ``layer`` split by query position: ``[q_pos, b, k_pos, head, d_head]``."""
    z_grad = passes.grad[Site("attn_head", layer)]  # [b, q, h, e]
    pattern = passes.target[Site("pattern", layer)]  # [b, h, q, k]
    if kind == "v":
        return torch.einsum("bhqk,bqhe->qbkhe", pattern, z_grad)
    q, k, v = (passes.target[Site(x, layer)] for x in "qkv")
    g_a = torch.einsum("bqhe,bkhe->bhqk", z_grad, v)
    g_s = pattern * (g_a - (pattern * g_a).sum(-1, keepdim=True))
    return torch.einsum("bhqk,bqhe->qbkhe", g_s, q) * ft.scale


def _per_position_scores(passes, ft, model: Model, send, recv, n_layers: int, W_O: torch.Tensor) -> torch.Tensor:
    """``[b, sender, receiver, i, j]``: the score of sender at ``i`` → receiver read at ``j``."""
    b, seq = passes.target[Site("resid_pre", 0)].shape[:2]
    delta = {"embed": passes.source[Site("resid_pre", 0)] - passes.target[Site("resid_pre", 0)]}
    for layer in range(n_layers):
        dz = passes.source[Site("attn_head", layer)] - passes.target[Site("attn_head", layer)]
        for h in range(model.shape.n_heads):
            delta[Site("attn_head", layer, head=h).label] = dz[:, :, h] @ W_O[layer, h].to(dz.dtype)
        delta[Site("mlp_out", layer).label] = passes.source[Site("mlp_out", layer)] - passes.target[Site("mlp_out", layer)]
    grads = _receiver_position_grads(passes, ft, recv, n_layers, seq)
    out = torch.zeros(b, len(send), len(recv), seq, seq, dtype=torch.float64)
    for r, g in enumerate(grads):  # g: [j, b, i, d] or [b, i, d] (same position)
        for s, (label, *_rest) in enumerate(send):
            d = delta[label].double()
            if g.ndim == 4:
                out[:, s, r] = torch.einsum("bid,jbid->bij", d, g.double())
            else:
                out[:, s, r] = torch.diag_embed(torch.einsum("bid,bid->bi", d, g.double()))
    return out


def _receiver_position_grads(passes, ft, recv, n_layers: int, seq: int) -> list[torch.Tensor]:
    """Per receiver, the gradient of its own input by position (split by query for k / v)."""
    pre = [passes.grad[Site("resid_pre", layer)] for layer in range(n_layers)]
    mid = [passes.grad[Site("resid_mid", layer)] for layer in range(n_layers)]
    post = pre[1:] + [passes.grad[Site("resid_post", n_layers - 1)]]
    cache: dict[tuple[int, str], dict[Site, torch.Tensor]] = {}
    out = []
    for label, layer, _ in recv:
        site = None if label == "logits" else Site.from_label(label)
        if site is None:
            out.append(post[-1])
        elif site.kind == "mlp_out":
            out.append(mid[layer] - post[layer])
        else:
            key = (layer, site.kind)
            if key not in cache:
                resid = passes.target[Site("resid_pre", layer)]
                if site.kind == "q":
                    cache[key] = head_input_grads(ft, layer, resid, {"q": passes.grad[Site("q", layer)]})
                else:
                    split = _split_by_query(passes, ft, layer, site.kind)
                    per_j = [head_input_grads(ft, layer, resid, {site.kind: split[j]}) for j in range(seq)]
                    cache[key] = {s: torch.stack([g[s] for g in per_j]) for s in per_j[0]}
            out.append(cache[key][site])
    return out


def position_edge_attribution(
    model: Model,
    pairs: PromptPairs | PairBatch,
    *,
    spans: Schema = "arithmetic",
    direction: Direction = "denoise",
    metric: str | MetricFn = "logit_diff",
    normalize: bool = True,
    answer: AnswerMode = "multi",
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> PositionEdgeResult:
    """PEAP: every (sender, span) → (receiver, span) edge, per-head q / k / v receivers (module doc).

    ``spans``: the schema that names positions, ``"arithmetic"`` or ``"positions"``.

    Senders are the embeddings, every head and every MLP; receivers every head's q, k and v,
    every MLP and the logits. Scores are EAP's first-order estimates (``atp``), summed over the
    positions of each span and averaged over pairs; over spans they add up to
    ``edge_attribution_patch(..., receivers=("q", "k", "v", "mlp_in", "logits"))``.
    """
    if spans not in SCHEMAS:
        raise MethodError(f"unknown schema {spans!r}; valid: {', '.join(SCHEMAS)}")
    con = attribution_contrast(model, pairs, direction=direction, metric=metric, normalize=normalize,
                               answer=answer, method="atp", ig_steps=1, batch_size=batch_size, n_boot=n_boot)
    if model.shape.n_kv_heads not in (None, model.shape.n_heads):
        raise MethodError("position-aware edges split keys and values by query head: no grouped-query attention")
    schema = spans
    spans = _spans(model, con.batch, schema)  # before any forward pass: a prompt the schema cannot read
    ft = functional(model)
    if ft.rotary is not None:
        raise MethodError("position-aware edges need learned positions (no rotary embedding)")
    n_layers = model.shape.n_layers
    send, recv = _edge_layout(model, ("embed", "attn_head", "mlp_out"), ("q", "k", "v", "mlp_in", "logits"))
    sites = [Site(k, layer) for layer in range(n_layers)
             for k in ("resid_pre", "resid_mid", "attn_head", "mlp_out", "q", "k", "v", "pattern")]
    sites.append(Site("resid_post", n_layers - 1))
    model.validate(sites, con.batch.seq_len)
    W_O = model.weights().W_O.detach()
    names = sorted({s for row in spans for s in row}, key=lambda s: min(row.index(s) for row in spans if s in row))
    binned, target_scores, source_scores = [], [], []
    start = 0
    for part in tqdm(list(con.parts(batch_size)), desc="position-aware edges", disable=not progress, leave=False):
        passes = gradient_passes(model, part, sites, con.metric_fn, direction, "atp", 1)
        scores = _per_position_scores(passes, ft, model, send, recv, n_layers, W_O)
        binned.append(_bin(scores, spans[start:start + len(part)], names))
        start += len(part)
        target_scores.append(passes.target_scores)
        source_scores.append(passes.source_scores)
    return _package(con, model, torch.cat(binned), send, recv, names, torch.cat(target_scores),
                    torch.cat(source_scores), direction=direction, schema=schema, n_boot=n_boot, seed=seed)


def _bin(scores: torch.Tensor, spans: list[list[str]], names: list[str]) -> torch.Tensor:
    """Sum ``[b, s, r, i, j]`` over the positions of each span: ``[b, s, span_i, r, span_j]``."""
    index = {n: k for k, n in enumerate(names)}
    b, n_s, n_r, seq, _ = scores.shape
    onehot = torch.zeros(b, seq, len(names), dtype=scores.dtype)
    for row, spans_row in enumerate(spans):
        for p, name in enumerate(spans_row):
            onehot[row, p, index[name]] = 1.0
    return torch.einsum("bsrij,bix,bjy->bsxry", scores, onehot, onehot)


def _package(con, model: Model, binned: torch.Tensor, send, recv, names: list[str], target: torch.Tensor,
             source: torch.Tensor, *, direction: str, schema: str, n_boot: int, seed: int) -> PositionEdgeResult:
    b = binned.shape[0]
    n_span = len(names)
    flat = binned.reshape(b, len(send) * n_span, len(recv) * n_span)
    # No edge where the sender writes after the receiver reads, or where the receiver reads at
    # another span (q / MLP / logits read at the sender's position; k / v reach later queries).
    first = {n: k for k, n in enumerate(names)}

    def possible(sender, span_i: str, receiver, span_j: str) -> bool:
        kind = None if receiver[0] == "logits" else Site.from_label(receiver[0]).kind
        same = first[span_j] >= first[span_i] if kind in ("k", "v") else span_j == span_i
        return sender[3] <= receiver[2] and same

    valid = torch.tensor([[possible(s, si, r, sj) for r in recv for sj in names] for s in send for si in names])
    flat = torch.where(valid, flat, torch.nan)
    clean, corrupt = (source, target) if direction == "denoise" else (target, source)
    coords = {"component": [f"{s[0]}@{n}" for s in send for n in names],
              "site": [f"{r[0]}@{n}" for r in recv for n in names],
              "sender": ("component", [s[0] for s in send for _ in names]),
              "comp_span": ("component", [n for _ in send for n in names]),
              "receiver": ("site", [r[0] for r in recv for _ in names]),
              "site_span": ("site", [n for _ in recv for n in names])}
    options = {"spans": schema, "span_names": names, **con.options, "method": "atp", "n_boot": n_boot}
    values, extras, meta = package(con, model, "position_edge_attribution", flat.movedim(0, -1),
                                   dims=("component", "site"), coords=coords, clean_mean=float(clean.mean()),
                                   corrupt_mean=float(corrupt.mean()), options=options, extra={"baseline": 0.0},
                                   n_boot=n_boot, seed=seed, scale="effect")
    return PositionEdgeResult(values=values, meta=meta, extras=extras)


# -- registration ---------------------------------------------------------------------------------

register(MethodSpec(name="position_edges", function=position_edge_attribution, inputs="pairs",
                    result=PositionEdgeResult))
