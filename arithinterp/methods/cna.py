"""Yu & Ananiadou (EMNLP 2024) end to end: find the head, then compare the neurons with and without it.

The paper's recipe has two steps. :func:`head_scan` zero-ablates each attention head in turn (its
output ``z`` at every position) and measures how far the probability of the answer falls; the
head with the largest fall is the task's "arithmetic head". :func:`find_cna` then runs
:func:`~arithinterp.methods.components.comparative_neuron_analysis` of the last MLP layer's
neurons against that head (or a given one). Run on the prompts of one operator at a time, the
two steps give each operator's head and the neurons it feeds, which is how the paper finds
operation-specific heads.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from arithinterp.errors import ArithInterpError, SiteError
from arithinterp.methods._common import check_positive_int, make_meta
from arithinterp.methods.components import CNAResult, _answer_tokens, comparative_neuron_analysis
from arithinterp.methods.registry import MethodSpec, Options, RunContext, check_layer, register
from arithinterp.models import Model, Site
from arithinterp.results import Result, ScalarTable
from arithinterp.tasks import PromptSet

__all__ = ["find_cna", "head_scan"]


def _answer_probs(model: Model, tokens: torch.Tensor, ans: torch.Tensor, patches: dict, batch_size: int
                  ) -> torch.Tensor:
    """``log p(answer)`` at the last position of every prompt, with ``patches`` applied."""
    out = []
    for start in range(0, len(ans), batch_size):
        logits = model.logits(tokens[start:start + batch_size], patches)[:, -1].detach().double().cpu()
        out.append(torch.log_softmax(logits, -1).gather(1, ans[start:start + batch_size, None].cpu())[:, 0])
    return torch.cat(out)


def head_scan(model: Model, prompts: PromptSet, *, batch_size: int = 256) -> ScalarTable:
    """The fall of the answer's probability when each head is zero-ablated (Yu & Ananiadou's scan).

    Each head's output ``z`` is set to 0 at every position, one head at a time, and the mean
    probability of the (one-token) answer at the last position is compared with the clean run.
    Returns a :class:`~arithinterp.results.ScalarTable` with dims ``(layer, head)``: ``values``
    the fall of the mean probability (clean minus ablated; the paper ranks heads by it), extras
    ``prob`` (the mean probability with the head ablated) and ``logprob_drop`` (the mean fall of
    the answer's log-probability); ``meta.extra["clean_prob"]``: the clean mean probability.
    """
    check_positive_int("batch_size", batch_size)
    tokens, ans = _answer_tokens(model, prompts, "single")
    ans = ans[:, 0]
    s = model.shape
    clean = _answer_probs(model, tokens, ans, {}, batch_size)
    prob = np.zeros((s.n_layers, s.n_heads))
    drop = np.zeros((s.n_layers, s.n_heads))
    for layer in range(s.n_layers):
        for head in range(s.n_heads):
            ablated = _answer_probs(model, tokens, ans, {Site("attn_head", layer, head=head): torch.zeros(())},
                                    batch_size)
            prob[layer, head] = float(ablated.exp().mean())
            drop[layer, head] = float((clean - ablated).mean())
    clean_prob = float(clean.exp().mean())
    coords = {"layer": np.arange(s.n_layers), "head": np.arange(s.n_heads)}
    meta = make_meta("head_scan", model, prompts, options={"batch_size": batch_size},
                     extra={"clean_prob": clean_prob})
    table = ScalarTable.from_array(clean_prob - prob, dims=("layer", "head"), meta=meta, metric="prob_drop",
                                   coords=coords)
    return table.replace(extras={"prob": table.values.copy(data=prob), "logprob_drop": table.values.copy(data=drop)})


def find_cna(
    model: Model,
    prompts: PromptSet,
    *,
    head: tuple[int, int] | None = None,
    layer: int | None = None,
    batch_size: int = 32,
) -> dict[str, Result]:
    """Yu & Ananiadou's head scan, then CNA of ``layer``'s neurons (default: the last) against a head.

    ``head``: ``(layer, head)`` to ablate; default: the head whose ablation lowers the answer's
    probability most (:func:`head_scan`), among the heads at or below ``layer`` (a later head
    cannot change the layer's neurons). Returns ``{"heads": the scan, "cna": the CNAResult}``.
    """
    s = model.shape
    layer = s.n_layers - 1 if layer is None else layer
    if not 0 <= layer < s.n_layers:
        raise ArithInterpError(f"layer must lie in [0, {s.n_layers}), got {layer}")
    scan = head_scan(model, prompts, batch_size=max(batch_size, 256))
    if head is None:
        drops = scan.values.sel(layer=slice(0, layer))
        flat = int(np.argmax(drops.values))
        head = (int(drops.coords["layer"].values[flat // s.n_heads]), int(flat % s.n_heads))
    cna = comparative_neuron_analysis(model, prompts, head=tuple(head), layer=layer, batch_size=batch_size)
    return {"heads": scan, "cna": cna}


# -- registration ---------------------------------------------------------------------------------


class CNAOptions(Options):
    """Options of :func:`find_cna`."""

    head: tuple[int, int] | None = None
    layer: int | None = Field(None, ge=0)
    batch_size: int = Field(32, ge=1)


def _check_cna(ctx: RunContext, options: CNAOptions) -> None:
    check_layer(ctx.model, options.layer)
    if options.head is not None:
        Site("attn_head", options.head[0], head=options.head[1]).validate(ctx.model.shape)
        layer = ctx.model.shape.n_layers - 1 if options.layer is None else options.layer
        if options.head[0] > layer:
            raise SiteError(f"head: L{options.head[0]}H{options.head[1]} comes after layer {layer}'s MLP, "
                            "so it cannot change those neurons; give a head at or below the layer")
    _answer_tokens(ctx.model, ctx.prompts, "single")  # one-token answers, before the scan


register(MethodSpec(name="cna", function=find_cna, inputs="prompts", result=(ScalarTable, CNAResult),
                    options=CNAOptions, check=_check_cna))
