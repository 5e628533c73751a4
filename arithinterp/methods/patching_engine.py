"""The fast, exact activation-patching engine.

A literal sweep runs one full forward pass per (cell, batch). This engine
computes the same numbers with far less work:

1. the source and target runs are computed once, caching per layer the
   residual stream, keys/values, head outputs and MLP activations;
2. every patch is turned into a replacement of the residual stream at one
   *stage* (entering block ``l``, after its attention, or after its MLP) for
   positions ``p0...``; head, neuron and attention-output patches are written
   as a delta (source − target contribution) added to the target's residual;
3. the patched pass starts at that stage from the cached target state,
   recomputes only positions ``>= p0`` (earlier positions cannot change under
   causal attention, so their cached keys and values are reused), and in the
   last block computes the MLP, final norm and unembedding only at the
   positions the metric reads;
4. cells that start at the same stage, layer and position are batched as
   variants of one pass, chunked to a memory budget.

It runs on :class:`arithinterp.models.functional.FunctionalTransformer`, which
is checked against the backend's logits before use; for models it does not
support, :func:`run_fast` falls back to the literal engine and warns.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass

import torch

from arithinterp.errors import ModelLoadError
from arithinterp.methods.metrics import MetricFn, PairBatch
from arithinterp.methods.sweep import run_literal
from arithinterp.models import Model, Site
from arithinterp.models.functional import KV, FunctionalTransformer
from arithinterp.models.site import SITE_KIND_INFO
from arithinterp.progress_bars import tqdm

_STAGE = {kind: info.stage for kind, info in SITE_KIND_INFO.items()}

MEMORY_BUDGET = 256 * 2**20
"""Bytes of activations one batched patched pass may hold (roughly)."""


@dataclass
class Trace:
    """Per-layer activations of one run, computed by the functional forward."""

    embed: torch.Tensor
    resid_pre: list[torch.Tensor]
    q: list[torch.Tensor]
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    kv: list[KV]
    pattern: list[torch.Tensor]
    z: list[torch.Tensor]
    attn_out: list[torch.Tensor]
    resid_mid: list[torch.Tensor]
    mlp_post: list[torch.Tensor]
    mlp_out: list[torch.Tensor]
    resid_post: list[torch.Tensor]
    final: torch.Tensor
    logits: torch.Tensor


def trace(ft: FunctionalTransformer, tokens: torch.Tensor) -> Trace:
    """Run the functional forward once, keeping every activation the engine reads."""
    t = Trace(ft.embed(tokens), *([] for _ in range(12)), final=None, logits=None)  # type: ignore[arg-type]
    x = ft.resid0(tokens, t.embed)
    positions = torch.arange(tokens.shape[1])
    for layer in range(ft.n_layers):
        t.resid_pre.append(x)
        q, k, v = ft.qkv(layer, x)
        t.q.append(q), t.k.append(k), t.v.append(v)
        kr = ft.rotate(k, positions)
        pattern = ft.pattern(ft.rotate(q, positions), kr, 0)
        z = ft.z(pattern, v)
        t.kv.append(KV(kr, v)), t.pattern.append(pattern), t.z.append(z)
        attn_out = ft.attn_out(layer, z)
        mid = x + attn_out
        post_act = ft.mlp_post(layer, mid)
        mlp_out = ft.mlp_out(layer, post_act)
        x = mid + mlp_out
        t.attn_out.append(attn_out), t.resid_mid.append(mid)
        t.mlp_post.append(post_act), t.mlp_out.append(mlp_out), t.resid_post.append(x)
    t.final = ft.final_resid(x)
    t.logits = ft.unembed(t.final)
    return t


def functional_for(model: Model) -> FunctionalTransformer | None:
    """The functional forward of ``model``, or ``None`` if its family is not supported."""
    hf = model.backend.hf_model() if hasattr(model.backend, "hf_model") else None
    if hf is None:
        return None
    try:
        return FunctionalTransformer(hf)
    except ModelLoadError:
        return None


def _group_key(site: Site, seq_len: int) -> tuple[str, int, int]:
    layer = -1 if site.layer is None else site.layer
    stage = _STAGE[site.kind]
    if site.kind == "final_resid":
        layer = 10**9
    pos = site.pos if site.pos is None or site.pos >= 0 else seq_len + site.pos
    return stage, max(layer, 0) if stage != "final" else layer, 0 if pos is None else pos


def _at(site: Site, p0: int) -> tuple:
    """Index of the patched positions within ``x[:, p0:]`` (all of it for pos=None)."""
    return (slice(None), slice(None)) if site.pos is None else (slice(None), site.pos - p0)


def _head_z(ft: FunctionalTransformer, site: Site, src: Trace, tgt: Trace, p0: int) -> torch.Tensor:
    """New head outputs ``[b, S-p0, head, d_head]`` of the target run after a q/k/v/pattern patch."""
    layer, n = site.layer, tgt.q[site.layer].shape[1]
    heads = slice(None) if site.head is None else slice(site.head, site.head + 1)
    rows = slice(None) if site.pos is None else slice(site.pos, site.pos + 1)
    q, k, v = (x[layer][:, :, heads].clone() for x in (tgt.q, tgt.k, tgt.v))
    pattern = tgt.pattern[layer][:, heads].clone()
    positions = torch.arange(n)
    if site.kind == "pattern":
        pattern[:, :, rows] = src.pattern[layer][:, heads][:, :, rows]
        pattern = pattern[:, :, p0:]
    else:
        chosen = {"q": q, "k": k, "v": v}[site.kind]
        chosen[:, rows] = getattr(src, site.kind)[layer][:, rows][:, :, heads]
        if site.kind in ("q", "k"):
            q_rot = ft.rotate(q[:, p0:], positions[p0:])
            scores = torch.einsum("bqhd,bkhd->bhqk", q_rot, ft.rotate(k, positions)) * ft.scale
            mask = torch.arange(n).view(1, -1) > positions[p0:].view(-1, 1)
            pattern = torch.softmax(scores.masked_fill(mask, torch.finfo(scores.dtype).min), dim=-1)
        else:
            pattern = pattern[:, :, p0:]
    return torch.einsum("bhqk,bkhd->bqhd", pattern, v)


def _inject(ft: FunctionalTransformer, site: Site, src: Trace, tgt: Trace, p0: int) -> torch.Tensor:
    """The target's residual stream at the site's stage for positions ``p0...`` after the patch."""
    kind, layer = site.kind, site.layer
    idx = _at(site, p0)
    if kind == "final_resid":
        x = tgt.final[:, p0:].clone()
        x[idx] = src.final[:, p0:][idx]
        return x
    if kind in ("embed", "resid_pre", "resid_mid", "resid_post"):
        layer = 0 if kind == "embed" else layer
        base = {"embed": tgt.resid_pre, "resid_pre": tgt.resid_pre, "resid_mid": tgt.resid_mid,
                "resid_post": tgt.resid_post}[kind][layer][:, p0:]
        x = base.clone()
        if kind == "embed":
            x[idx] = x[idx] + (src.embed - tgt.embed)[:, p0:][idx]
        else:
            source = {"resid_pre": src.resid_pre, "resid_mid": src.resid_mid, "resid_post": src.resid_post}[kind]
            x[idx] = source[layer][:, p0:][idx]
        return x
    if kind in ("attn_out", "mlp_out"):
        base = (tgt.resid_mid if kind == "attn_out" else tgt.resid_post)[layer][:, p0:]
        delta = (getattr(src, kind)[layer] - getattr(tgt, kind)[layer])[:, p0:]
        x = base.clone()
        x[idx] = x[idx] + delta[idx]
        return x
    if kind == "mlp_post":
        d_post = (src.mlp_post[layer] - tgt.mlp_post[layer])[:, p0:]
        if site.neuron is None:
            delta = d_post @ ft.W_out(layer)
        else:
            delta = d_post[..., site.neuron, None] * ft.W_out(layer)[site.neuron]
        x = tgt.resid_post[layer][:, p0:].clone()
        x[idx] = x[idx] + delta[idx]
        return x
    # Attention heads: the head's new z minus its old z, through W_O.
    W_O = ft.W_O_heads(layer)
    heads = slice(None) if site.head is None else slice(site.head, site.head + 1)
    if kind == "attn_head":
        d_z = (src.z[layer] - tgt.z[layer])[:, p0:, heads]
        delta = torch.einsum("bphd,hdm->bpm", d_z, W_O[heads])
        x = tgt.resid_mid[layer][:, p0:].clone()
        x[idx] = x[idx] + delta[idx]
        return x
    new_z = _head_z(ft, site, src, tgt, p0)
    d_z = new_z - tgt.z[layer][:, p0:, heads]
    return tgt.resid_mid[layer][:, p0:] + torch.einsum("bphd,hdm->bpm", d_z, W_O[heads])


def _continue(ft: FunctionalTransformer, stage: str, layer: int, p0: int, x: torch.Tensor,
              tgt: Trace, n_variants: int, answer_positions: torch.Tensor) -> torch.Tensor:
    """Finish a patched pass from ``stage`` of ``layer``; return answer logits ``[N, answer, vocab]``."""
    wanted = answer_positions[answer_positions >= p0] - p0
    n_layers = ft.n_layers
    if stage == "final":
        return ft.unembed(x[:, wanted])
    if stage == "mid":
        if layer == n_layers - 1:
            x = x[:, wanted]
        x = x + ft.mlp_out(layer, ft.mlp_post(layer, x))
        first = layer + 1
    elif stage == "post":
        first = layer + 1
    else:
        first = layer
    if stage == "mid" and layer == n_layers - 1:
        return ft.unembed(ft.final_resid(x))
    for j in range(first, n_layers):
        past = KV(tgt.kv[j].k[:, :p0].repeat(n_variants, 1, 1, 1), tgt.kv[j].v[:, :p0].repeat(n_variants, 1, 1, 1))
        if j < n_layers - 1:
            x, _ = ft.block(j, x, start=p0, past=past)
        else:
            x = _last_block(ft, j, x, p0, past, wanted)
    if first >= n_layers:  # patched after the last block's MLP
        x = x[:, wanted]
    return ft.unembed(ft.final_resid(x))


def _last_block(ft: FunctionalTransformer, layer: int, x: torch.Tensor, p0: int, past: KV,
                wanted: torch.Tensor) -> torch.Tensor:
    """The last block, with queries, MLP and output only at the positions the metric reads."""
    q, k, v = ft.qkv(layer, x)
    positions = torch.arange(p0, p0 + x.shape[1])
    k = torch.cat([past.k, ft.rotate(k, positions)], dim=1)
    v = torch.cat([past.v, v], dim=1)
    q = ft.rotate(q[:, wanted], positions[wanted])
    pattern = ft.pattern_at(q, k, positions[wanted])
    mid = x[:, wanted] + ft.attn_out(layer, ft.z(pattern, v))
    return mid + ft.mlp_out(layer, ft.mlp_post(layer, mid))


def _answer_logits(tgt: Trace, answer_positions: torch.Tensor) -> torch.Tensor:
    return tgt.logits[:, answer_positions]


def run_fast(model: Model, batch: PairBatch, sites: list[Site], direction: str, metric: MetricFn,
             *, progress: bool = True, memory_budget: int = MEMORY_BUDGET
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Patch each site; equals the literal engine.

    Returns the metric per (site, pair) ``[site, pair]`` and the unpatched
    clean and corrupt answer logits ``[pair, answer, vocab]``.
    """
    ap = batch.answer_positions
    ft = functional_for(model)
    grouped = ft is not None and ft.n_kv_heads != ft.n_heads
    if ft is None or grouped and any(not s.info.additive for s in sites):
        warnings.warn(f"the fast patching engine does not support {model.name}; using the literal engine",
                      stacklevel=2)
        return run_literal(model, batch, sites, direction, metric, progress)
    with torch.no_grad():
        clean, corrupt = trace(ft, batch.clean), trace(ft, batch.corrupt)
        # The functional forward must reproduce the backend before its numbers are trusted.
        check_functional(corrupt.logits, model.logits(batch.corrupt))
        src, tgt = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
        scores = _sweep(ft, batch, sites, src, tgt, metric, progress, memory_budget)
        return scores, clean.logits[:, ap], corrupt.logits[:, ap]


#: The functional forward may differ from the backend's by float rounding: this much of the
#: largest |logit| of each position (a different order of the same float32 operations; on
#: ``zoo:modadd-113``, whose logits reach 83, TransformerLens differs by up to 3.8e-4), plus
#: :data:`FUNCTIONAL_ATOL`. A wrong forward differs by orders of magnitude more.
FUNCTIONAL_RTOL = 2e-5
FUNCTIONAL_ATOL = 1e-4


def check_functional(logits: torch.Tensor, reference: torch.Tensor) -> None:
    """Raise unless the functional forward's logits equal the backend's up to float rounding,
    judged against each position's logit scale (:data:`FUNCTIONAL_RTOL`)."""
    scale = reference.abs().amax(dim=-1, keepdim=True)
    excess = (logits - reference).abs() - (FUNCTIONAL_ATOL + FUNCTIONAL_RTOL * scale)
    if bool((excess > 0).any()):
        raise RuntimeError(
            "the functional forward disagrees with the backend "
            f"(max |diff| {float((logits - reference).abs().max()):.2e} at logits up to "
            f"{float(scale.max()):.3g}); please report this model"
        )


MERGE_ROWS = 4096
CHEAP_WASTE = 0.05
"""Below this many token rows per pass, passes are overhead-bound and positions are merged."""


def _chunks(members: list[tuple[int, int]], b: int, seq_len: int, rows_cap: int) -> list[tuple[int, list[int]]]:
    """Split one (stage, layer) group, sorted by start position, into passes ``(start, sites)``.

    A pass starts at the smallest start position of its variants; a variant
    that starts later recomputes a few unchanged positions, which is exact
    (they equal the target run). Variants are merged while the pass fits the
    memory budget and either the pass is small (overhead-bound) or the extra
    recomputed positions stay under CHEAP_WASTE of its work.
    """
    out: list[tuple[int, list[int]]] = []
    start, current, waste = 0, [], 0
    for p0, i in members:
        if current:
            rows = (len(current) + 1) * b * (seq_len - start)
            new_waste = waste + (p0 - start)
            small = rows <= MERGE_ROWS
            cheap = new_waste <= CHEAP_WASTE * (len(current) + 1) * (seq_len - start)
            if rows <= rows_cap and (small or cheap):
                current.append(i)
                waste = new_waste
                continue
            out.append((start, current))
        start, current, waste = p0, [i], 0
    if current:
        out.append((start, current))
    return out


def _sweep(ft, batch, sites, src, tgt, metric, progress, memory_budget) -> torch.Tensor:
    b, seq_len = batch.clean.shape
    ap = batch.answer_positions
    out = torch.empty(len(sites), b, dtype=torch.float64, device=batch.clean.device)  # no host copy per chunk
    groups: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for i, site in enumerate(sites):
        stage, layer, p0 = _group_key(site, seq_len)
        groups[(stage, layer)].append((p0, i))
    base_logits = _answer_logits(tgt, ap)
    deltas = _Deltas(ft, src, tgt)
    d_wide = max(ft.d_model, ft.blocks[0]["W_in"].shape[1])
    rows_cap = max(1, memory_budget // (d_wide * 4 * 4))
    bar = tqdm(total=len(sites), desc="patching", disable=not progress, leave=False)
    for (stage, layer), members in groups.items():
        for p0, idx in _chunks(sorted(members), b, seq_len, rows_cap):
            chunk_sites = [_absolute(sites[i], seq_len) for i in idx]
            x, changed = _inject_many(ft, chunk_sites, src, tgt, p0, deltas)
            start_stage, start_layer = stage, layer
            if stage == "mid" and changed is not None and layer < ft.n_layers - 1:
                x = _finish_block_at(ft, layer, x, changed, tgt, p0)
                start_stage, start_layer = "pre", layer + 1
            logits = _continue(ft, start_stage, start_layer, p0, x, tgt, len(idx), ap)
            full = base_logits.repeat(len(idx), 1, 1)
            full[:, ap >= p0] = logits
            scores = metric(full, batch.clean_answer.repeat(len(idx), 1), batch.corrupt_answer.repeat(len(idx), 1))
            out[idx] = scores.double().view(len(idx), b)
            bar.update(len(idx))
    bar.close()
    return out


_ADDITIVE = {kind for kind, info in SITE_KIND_INFO.items() if info.additive}


class _Deltas:
    """Per-position residual deltas (source − target contribution), computed once per layer."""

    def __init__(self, ft: FunctionalTransformer, src: Trace, tgt: Trace):
        self.ft, self.src, self.tgt = ft, src, tgt
        self._heads: dict[int, torch.Tensor] = {}

    def heads(self, layer: int) -> torch.Tensor:
        """``[b, pos, head, d_model]``: each head's change of its residual write."""
        if layer not in self._heads:
            d_z = self.src.z[layer] - self.tgt.z[layer]
            self._heads[layer] = torch.einsum("bphd,hdm->bphm", d_z, self.ft.W_O_heads(layer))
        return self._heads[layer]

    def base(self, site: Site) -> torch.Tensor:
        t = self.tgt
        if site.kind == "final_resid":
            return t.final
        stage = _STAGE[site.kind]
        layer = 0 if site.kind == "embed" else site.layer
        return {"pre": t.resid_pre, "mid": t.resid_mid, "post": t.resid_post}[stage][layer]

    def at(self, sites: list[Site], kind: str) -> torch.Tensor:
        """Deltas ``[V, b, d_model]`` for sites of one kind, each at its own position."""
        pos = torch.tensor([s.pos for s in sites])
        src, tgt = self.src, self.tgt
        if kind == "attn_head":
            layer = sites[0].layer
            heads = torch.tensor([s.head for s in sites])
            return self.heads(layer)[:, pos, heads].transpose(0, 1)
        if kind == "mlp_post":
            layer = sites[0].layer
            neurons = torch.tensor([s.neuron for s in sites])
            d_post = (src.mlp_post[layer] - tgt.mlp_post[layer])[:, pos, neurons]  # [b, V]
            return d_post.T.unsqueeze(-1) * self.ft.W_out(layer)[neurons].unsqueeze(1)
        if kind == "final_resid":
            return (src.final - tgt.final)[:, pos].transpose(0, 1)
        if kind == "embed":
            return (src.embed - tgt.embed)[:, pos].transpose(0, 1)
        layer = sites[0].layer
        source, target = getattr(src, kind)[layer], getattr(tgt, kind)[layer]
        return (source - target)[:, pos].transpose(0, 1)


def _inject_many(ft: FunctionalTransformer, sites: list[Site], src: Trace, tgt: Trace, p0: int,
                 deltas: _Deltas) -> torch.Tensor:
    """Stacked patched residual streams ``[V * b, S - p0, d]`` for sites sharing a stage and layer,
    and for single-position patches the changed column of each variant (else ``None``).

    Single-position patches that add a delta to the residual stream are built
    in one vectorised scatter; the rest (all-position patches, q/k/v/pattern)
    go through :func:`_inject` one by one.
    """
    if any(s.pos is None or s.kind not in _ADDITIVE or (s.kind == "attn_head" and s.head is None)
           or (s.kind == "mlp_post" and s.neuron is None) for s in sites):
        return torch.cat([_inject(ft, s, src, tgt, p0) for s in sites], dim=0), None
    base = deltas.base(sites[0])[:, p0:]
    n, b = len(sites), base.shape[0]
    x = base.unsqueeze(0).repeat(n, 1, 1, 1)  # [V, b, S - p0, d]
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sites):
        by_kind[s.kind].append(i)
    for kind, members in by_kind.items():
        d = deltas.at([sites[i] for i in members], kind)  # [V_k, b, d]
        rows = torch.tensor(members)
        cols = torch.tensor([sites[i].pos - p0 for i in members])
        x[rows, :, cols] = x[rows, :, cols] + d
    changed = torch.tensor([s.pos - p0 for s in sites])
    return x.reshape(n * b, *x.shape[2:]), changed


def _finish_block_at(ft: FunctionalTransformer, layer: int, x: torch.Tensor, changed: torch.Tensor,
                     tgt: Trace, p0: int) -> torch.Tensor:
    """Finish block ``layer`` after a single-position change of its resid_mid.

    The MLP reads one position, so only the changed row of each variant is
    recomputed; every other position keeps the target's resid_post. Returns
    the residual stream entering block ``layer + 1`` for positions ``p0...``.
    """
    n = changed.shape[0]
    x = x.view(n, -1, *x.shape[1:])  # [V, b, S - p0, d]
    variants = torch.arange(n)
    rows = x[variants, :, changed]  # [V, b, d]
    rows = rows + ft.mlp_out(layer, ft.mlp_post(layer, rows))
    y = tgt.resid_post[layer][:, p0:].unsqueeze(0).repeat(n, 1, 1, 1)
    y[variants, :, changed] = rows
    return y.reshape(-1, *y.shape[2:])


def _absolute(site: Site, seq_len: int) -> Site:
    return site if site.pos is None or site.pos >= 0 else site.at(seq_len + site.pos)
