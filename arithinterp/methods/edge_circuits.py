"""Edge-level circuits: running a model with only some edges kept, and MIB's edge-level curve.

An edge ``u → v`` is the part of ``v``'s input that ``u`` wrote. Ablating it gives ``v`` the
ablated write of ``u`` instead of the real one while every other reader still sees the real one:
``input_v = resid − Σ_{u → v ablated} (a_u − ã_u)``, where ``a_u`` is ``u``'s write in this very
run (it changes when edges into ``u`` are ablated) and ``ã_u`` its ablated write (the pair's
corrupt run for ``counterfactual``, MIB's patching ablation; the reference mean for ``mean``; 0 for
``zero``). :func:`run_with_edges` does it in one forward pass per batch with hooks that read each
sender's write as it is computed:

* an attention block (``attn_in``) reads ``resid_pre − D``; ``resid_mid`` gets ``D`` back, so the
  skip connection is untouched;
* a head's query / key / value (per-head receivers) is recomputed from ``resid_pre − D_h`` through
  the functional forward's norm and projection;
* an MLP reads ``resid_mid − D``; ``resid_post`` gets ``D`` back;
* the logits read ``resid_post[L-1] − D`` through the final norm.

Two exact checks hold (the tests): with every edge ablated under ``counterfactual`` the model
computes the corrupt run; keeping every edge out of a node set ``C`` (and out of the embeddings)
is node ablation of ``C``. :func:`mib_edge_curve` is MIB's edge-level faithfulness curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import xarray as xr

from arithinterp.errors import MethodError
from arithinterp.methods._common import make_meta
from arithinterp.methods.attribution_rules import functional
from arithinterp.methods.circuit_ablation import site_means
from arithinterp.methods.circuit_growth import rank_by_score, tie_tolerance
from arithinterp.methods.faithfulness import FAITHFULNESS_METRICS, faithfulness_scores
from arithinterp.methods.metrics import tokenize_pairs
from arithinterp.methods.mib import MIB_FRACTIONS, MIBCurveResult, area_under_curve, curve_points
from arithinterp.models import Model, Site
from arithinterp.results import Result
from arithinterp.tasks import PromptPairs

__all__ = ["EDGE_ABLATIONS", "edge_list", "mib_edge_curve", "run_with_edges"]

EdgeAblation = Literal["counterfactual", "mean", "zero"]
EDGE_ABLATIONS: tuple[str, ...] = ("counterfactual", "mean", "zero")
Edge = tuple[str, str]  # (sender label, receiver label): ("L0H1", "MLP1"), ("embed", "L1H0.q")


def edge_list(edges: Result) -> tuple[list[Edge], list[float]]:
    """Every scored edge of an edge-attribution result and its score. With per-head receivers the
    layer-level ``ATTN{l}`` columns are left out (the heads' q / k / v inputs replace them)."""
    v = edges.values
    sites = [str(s) for s in v.coords["site"].values]
    per_head = any(s.endswith((".q", ".k", ".v")) for s in sites)
    out, scores = [], []
    for sender in v.coords["component"].values:
        for site in sites:
            if per_head and site.startswith("ATTN"):
                continue
            value = float(v.sel(component=sender, site=site))
            if np.isfinite(value):
                out.append((str(sender), site))
                scores.append(value)
    return out, scores


def _ablated_writes(model: Model, kind: str, clean: torch.Tensor, corrupt: torch.Tensor,
                    batch_size: int) -> dict[Site, torch.Tensor]:
    """``ã``: resid_pre[0], every head's z and every MLP's output, per prompt or per position."""
    sites = [Site("resid_pre", 0)] + [Site(k, layer) for layer in range(model.shape.n_layers)
                                      for k in ("attn_head", "mlp_out")]
    if kind == "counterfactual":
        parts = [model.run_with_cache(corrupt[s:s + batch_size].to(model.device), sites)[1]
                 for s in range(0, corrupt.shape[0], batch_size)]
        return {site: torch.cat([p[site] for p in parts]) for site in sites}
    means = site_means(model, sites, clean.to(model.device), batch_size=batch_size)
    return means if kind == "mean" else {s: torch.zeros_like(m) for s, m in means.items()}


class _EdgeRun:
    """The hooks of one forward pass with the edges outside ``kept`` ablated."""

    def __init__(self, model: Model, missing: dict[str, list[str]], ablated: dict[Site, torch.Tensor], ft):
        self.model, self.missing, self.ablated, self.ft = model, missing, ablated, ft
        self.W_O = model.weights().W_O.detach()
        self.now: dict[str, torch.Tensor] = {}
        self.resid: dict[int, torch.Tensor] = {}

    def _delta(self, receiver: str, like: torch.Tensor) -> torch.Tensor | None:
        senders = self.missing.get(receiver)
        if not senders:
            return None
        total = torch.zeros_like(like)
        for sender in senders:
            total = total + (self.now[sender] - self._ablated_write(sender)).to(like.dtype)
        return total

    def _ablated_write(self, sender: str) -> torch.Tensor:
        if sender == "embed":
            return self.ablated[Site("resid_pre", 0)]
        site = Site.from_label(sender)
        if site.kind == "mlp_out":
            return self.ablated[site]
        z = self.ablated[Site("attn_head", site.layer)][..., site.head, :]
        return z @ self.W_O[site.layer, site.head].to(z.dtype)

    def patches(self) -> dict[Site, object]:
        n_layers, out = self.model.shape.n_layers, {}
        for layer in range(n_layers):
            out[Site("resid_pre", layer)] = self._pre(layer)
            out[Site("resid_mid", layer)] = self._mid(layer)
            out[Site("attn_head", layer)] = self._heads(layer)
            out[Site("mlp_out", layer)] = self._mlp(layer)
            out[Site("resid_post", layer)] = self._post(layer)
            if self.ft is not None:
                for kind in "qkv":
                    out[Site(kind, layer)] = self._head_input(layer, kind)
        return out

    def _pre(self, layer: int):
        def fn(x):
            if layer == 0:
                self.now["embed"] = x
            self.resid[layer] = x
            d = self._delta(Site("attn_out", layer).label, x)
            self.now[f"_attn{layer}"] = d
            return x if d is None else x - d
        return fn

    def _mid(self, layer: int):
        def fn(x):
            back = self.now.pop(f"_attn{layer}", None)
            x = x if back is None else x + back
            d = self._delta(Site("mlp_out", layer).label, x)
            self.now[f"_mlp{layer}"] = d
            return x if d is None else x - d
        return fn

    def _post(self, layer: int):
        def fn(x):
            back = self.now.pop(f"_mlp{layer}", None)
            x = x if back is None else x + back
            if layer == self.model.shape.n_layers - 1:
                d = self._delta("logits", x)
                x = x if d is None else x - d
            return x
        return fn

    def _heads(self, layer: int):
        def fn(z):
            for h in range(z.shape[2]):
                self.now[Site("attn_head", layer, head=h).label] = z[:, :, h] @ self.W_O[layer, h].to(z.dtype)
            return z
        return fn

    def _mlp(self, layer: int):
        def fn(x):
            self.now[Site("mlp_out", layer).label] = x
            return x
        return fn

    def _head_input(self, layer: int, kind: str):
        index = "qkv".index(kind)

        def fn(x):
            out = None
            for h in range(x.shape[2]):
                d = self._delta(Site(kind, layer, head=h).label, self.resid[layer])
                if d is not None:
                    out = x.clone() if out is None else out
                    out[:, :, h] = self.ft.qkv(layer, self.resid[layer] - d)[index][:, :, h].to(x.dtype)
            return x if out is None else out
        return fn


def run_with_edges(model: Model, tokens: torch.Tensor, kept: Sequence[Edge], all_edges: Sequence[Edge],
                   ablated: dict[Site, torch.Tensor]) -> torch.Tensor:
    """Logits of ``tokens`` with every edge of ``all_edges`` outside ``kept`` ablated (module doc).
    ``ablated``: the senders' ablated values for these rows (``resid_pre`` 0, ``attn_head`` z and
    ``mlp_out`` of each layer; ``[batch, pos, ...]`` or ``[pos, ...]``)."""
    keep = set(kept)
    missing: dict[str, list[str]] = {}
    for edge in all_edges:
        if edge not in keep:
            missing.setdefault(edge[1], []).append(edge[0])
    per_head = any(r.endswith((".q", ".k", ".v")) for _, r in all_edges)
    run = _EdgeRun(model, missing, ablated, functional(model) if per_head else None)
    return model.run_with_patches(tokens, run.patches())


def mib_edge_curve(
    model: Model,
    pairs: PromptPairs,
    edges: Result,
    *,
    ablation: EdgeAblation = "counterfactual",
    metric: str = "logit_diff",
    answer: Literal["multi", "single"] = "multi",
    absolute: bool = True,
    fractions: Sequence[float] = MIB_FRACTIONS,
    batch_size: int = 64,
) -> MIBCurveResult:
    """MIB's edge-level faithfulness curve, CPR and CMD of an edge-attribution result: the top
    ``int(fraction * n)`` edges by ``|score|`` kept, every other edge ablated (module doc)."""
    if ablation not in EDGE_ABLATIONS:
        raise MethodError(f"edge ablation {ablation!r} is not supported; valid: {', '.join(EDGE_ABLATIONS)}")
    if metric not in FAITHFULNESS_METRICS:
        raise MethodError(f"unknown metric {metric!r}; valid: {', '.join(FAITHFULNESS_METRICS)}")
    all_edges, scores = edge_list(edges)
    if not all_edges:
        raise MethodError("the edge-attribution result scores no edge")
    values = [abs(s) if absolute else s for s in scores]
    top = max(abs(v) for v in values)
    # Ties within the float tolerance of the largest score keep the result's order (senders by layer).
    ranked = rank_by_score(values, tie_tolerance(top, 0.0, model.dtype) if top else 0.0)
    batch = tokenize_pairs(pairs, model.tokenizer, answer=answer)
    ablated = _ablated_writes(model, ablation, batch.clean, batch.corrupt, batch_size)
    per_prompt = ablation == "counterfactual"

    def score(kept: list[Edge]) -> float:
        out = []
        for s in range(0, len(batch), batch_size):
            rows = {k: (v[s:s + batch_size] if per_prompt else v) for k, v in ablated.items()}
            logits = run_with_edges(model, batch.clean[s:s + batch_size].to(model.device), kept, all_edges, rows)
            out.append(faithfulness_scores(logits[:, batch.answer_positions],
                                           batch.clean_answer[s:s + batch_size].to(model.device), metric))
        return float(torch.cat(out).mean())

    full, empty = score(all_edges), score([])
    counts = curve_points(len(all_edges), fractions)
    seen: dict[int, float] = {}
    for k in counts:
        if k not in seen:
            seen[k] = float("nan") if full == empty else (score([all_edges[i] for i in ranked[:k]]) - empty) / (full - empty)
    curve = [seen[k] for k in counts]
    cpr, cmd = area_under_curve(list(fractions), curve)
    values_da = xr.DataArray(np.array(curve), dims=("fraction",),
                             coords={"fraction": np.array(fractions, dtype=float), "n_kept": ("fraction", np.array(counts))})
    meta = make_meta("mib_edge_curve", model, pairs.clean,
                     options={"ablation": ablation, "metric": metric, "answer": answer, "absolute": absolute,
                              "level": "edge", "n_pairs": len(pairs)})
    return MIBCurveResult(values=values_da, meta=meta, cpr=cpr, cmd=cmd, level="edge", n_items=len(all_edges),
                          full_score=full, empty_score=empty,
                          ranking=[f"{all_edges[i][0]}->{all_edges[i][1]}" for i in ranked])
