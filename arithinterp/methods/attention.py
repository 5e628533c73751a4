"""Attention patterns of a clean/corrupt pair, side by side (in the spirit of CircuitsVis).

:func:`attention_patterns` runs one pair's clean and corrupt sequences (prompt, then the clean
answer teacher-forced, as patching runs them) and keeps every head's attention weights;
:meth:`AttentionResult.figure` draws one head as two heatmaps, the prompt's tokens on both axes
(query down, key across), the weight and both tokens in the hover, clean beside corrupt with
one colour scale. The dashboard's detail panel shows the selected head this way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from arithinterp.errors import MethodError
from arithinterp.methods._common import make_meta
from arithinterp.methods.metrics import AnswerMode, PairBatch, tokenize_pairs
from arithinterp.methods.registry import MethodSpec, Panel, ReportView, RunContext, register
from arithinterp.models import Model, Site
from arithinterp.results import Result
from arithinterp.tasks import PromptPairs

__all__ = ["AttentionResult", "attention_patterns"]

#: The two runs of a pair, in order (the ``prompt`` axis of :class:`AttentionResult`).
RUNS = ("clean", "corrupt")


class AttentionResult(Result):
    """Attention weights of one clean/corrupt pair.

    ``values``: dims ``(prompt, layer, head, pos, key_pos)``; ``prompt`` is the run (coordinate
    ``run``: ``clean``, ``corrupt``), ``pos`` the query and ``key_pos`` the key position. The
    tokens differ between the runs, so they are ``meta.extra["tokens"]``: ``{run: [token, ...]}``.
    """

    metric_name = "attention"

    def tokens(self, run: str) -> list[str]:
        return [str(t) for t in self.meta.extra["tokens"][run]]

    def figure(self, layer: int, head: int) -> go.Figure:
        """Head ``(layer, head)``: clean and corrupt patterns side by side, hover = weight and tokens."""
        v = self.values.sel(layer=layer, head=head)
        fig = make_subplots(rows=1, cols=2, subplot_titles=[f"{run}: {''.join(self.tokens(run))}" for run in RUNS],
                            horizontal_spacing=0.12)
        for i, run in enumerate(RUNS):
            toks = self.tokens(run)
            labels = [f"{p}:{t}" for p, t in enumerate(toks)]
            z = np.asarray(v.isel(prompt=i).values, dtype=float)
            z = np.where(np.tril(np.ones_like(z)) > 0, z, np.nan)  # causal: nothing above the diagonal
            hover = np.array([[f"query {q} '{toks[q]}' → key {k} '{toks[k]}'" for k in range(len(toks))]
                              for q in range(len(toks))], dtype=object)
            fig.add_trace(go.Heatmap(
                z=z, x=labels, y=labels, zmin=0, zmax=1, colorscale="Blues", coloraxis="coloraxis", name=run,
                text=hover, hovertemplate="%{text}<br>weight %{z:.3f}<extra>" + run + "</extra>",
                xgap=1, ygap=1,
            ), 1, i + 1)
            fig.update_xaxes(title_text="key (attended to)", type="category", tickangle=0, row=1, col=i + 1)
            fig.update_yaxes(title_text="query", type="category", autorange="reversed", row=1, col=i + 1)
        label = Site("attn_head", layer, head=head).label
        fig.update_layout(title={"text": f"{label} attention: clean vs corrupt (pair {self.meta.extra['pair']})",
                                 "font": {"size": 13}},
                          coloraxis={"colorscale": "Blues", "cmin": 0, "cmax": 1, "colorbar": {"title": "weight"}},
                          height=420, margin={"l": 60, "r": 10, "t": 60, "b": 50})
        return fig

    def plot(self) -> go.Figure:
        """The head whose pattern changes most between clean and corrupt."""
        diff = np.abs(self.values.isel(prompt=0) - self.values.isel(prompt=1)).sum(("pos", "key_pos"))
        layer, head = np.unravel_index(int(np.nanargmax(diff.values)), diff.shape)
        return self.figure(int(diff.coords["layer"].values[layer]), int(diff.coords["head"].values[head]))

    @classmethod
    def example(cls) -> AttentionResult:
        rng = np.random.default_rng(0)
        w = rng.random((2, 1, 2, 3, 3)) * np.tril(np.ones((3, 3)))
        w = w / w.sum(-1, keepdims=True)
        values = xr.DataArray(w, dims=("prompt", "layer", "head", "pos", "key_pos"),
                              coords={"prompt": [0, 1], "run": ("prompt", list(RUNS)), "layer": [0],
                                      "head": [0, 1], "pos": np.arange(3), "key_pos": np.arange(3)})
        meta = make_meta("attention_patterns", None,
                         extra={"tokens": {"clean": ["1", "+", "2"], "corrupt": ["3", "+", "2"]}, "pair": 0})
        return cls(values=values, meta=meta)


def attention_patterns(
    model: Model,
    pairs: PromptPairs | PairBatch,
    *,
    pair: int = 0,
    answer: AnswerMode = "multi",
) -> AttentionResult:
    """Every head's attention weights on pair ``pair``'s clean and corrupt sequences.

    Args:
        model: the model.
        pairs: clean/corrupt pairs (or a tokenized :class:`PairBatch`).
        pair: which pair.
        answer: how the sequences are tokenized (``"multi"``: the prompt, then the clean answer
            teacher-forced, as patching runs them; ``"single"``: the prompt alone).
    """
    batch = pairs if isinstance(pairs, PairBatch) else tokenize_pairs(pairs, model.tokenizer, answer=answer)
    if not 0 <= pair < len(batch):
        raise MethodError(f"pair {pair} is not a pair index; valid: 0..{len(batch) - 1}")
    s = model.shape
    sites = [Site("pattern", layer) for layer in range(s.n_layers)]
    model.validate(sites)
    runs = {"clean": batch.clean[pair:pair + 1], "corrupt": batch.corrupt[pair:pair + 1]}
    data, tokens = [], {}
    for run, seq in runs.items():
        _, cache = model.run_with_cache(seq.to(model.device), sites)
        data.append(np.stack([cache[site][0].detach().double().cpu().numpy() for site in sites]))
        tokens[run] = model.to_str_tokens(seq[0])
    n = batch.clean.shape[1]
    values = xr.DataArray(np.stack(data), dims=("prompt", "layer", "head", "pos", "key_pos"), coords={
        "prompt": [0, 1], "run": ("prompt", list(RUNS)), "layer": np.arange(s.n_layers),
        "head": np.arange(data[0].shape[1]), "pos": np.arange(n), "key_pos": np.arange(n)})
    meta = make_meta("attention_patterns", model, None, options={"pair": pair, "answer": batch.answer or answer},
                     extra={"tokens": tokens, "pair": pair})
    return AttentionResult(values=values, meta=meta)


# -- registration ---------------------------------------------------------------------------------


def _report_attention(ctx: RunContext) -> dict:
    return {"attention": attention_patterns(ctx.model, ctx.batch(ctx.answer), answer=ctx.answer)}


def _panel(result: AttentionResult, site: Site) -> Any:
    if site.head is None:
        return "attention patterns belong to heads; select a head"
    return result.figure(site.layer, site.head)


register(MethodSpec(
    name="attention", function=attention_patterns, inputs="pairs", result=AttentionResult,
    report=ReportView(run=_report_attention, results=("attention",), order=95),
    panels=(Panel("attention", "Attention pattern (clean vs corrupt)", _panel),),
))
