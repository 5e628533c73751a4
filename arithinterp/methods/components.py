"""Direct logit attribution: each component's direct write to the answer logit.

The residual stream at the answer position is a sum of component writes
(embeddings, every head ``z_h @ W_O[h]``, every attention bias, every neuron
``mlp_post[n] * W_out[n]``, every MLP bias). The final norm is not linear,
so "the standard way" freezes its scale at the value of the real run: with
LayerNorm ``y = (x - mean x) / s * w + b`` each write ``c`` contributes
``((c - mean c) / s * w) @ W_U[:, answer]`` (RMSNorm: no centring, no
``b``); the norm's bias ``b @ W_U`` is one more component. The components
then sum exactly to the answer logit minus ``b_U[answer]``, which the tests
check. With ``against`` tokens the direction is ``W_U[:, answer] -
W_U[:, against]`` and the sum is the logit difference minus the ``b_U`` part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from pydantic import Field

from arithinterp.errors import ArithInterpError, MethodError
from arithinterp.methods._common import make_meta
from arithinterp.methods.metrics import AnswerMode
from arithinterp.methods.registry import (
    MethodSpec,
    NotApplicable,
    Options,
    ReportColumn,
    ReportView,
    RunContext,
    register,
)
from arithinterp.models import Model, Site
from arithinterp.results import Result, bootstrap_ci
from arithinterp.tasks import PromptSet, tokenize

ComponentKind = Literal["embed", "pos_embed", "head", "attn_bias", "neuron", "mlp_bias", "norm_bias"]


class DLAResult(Result):
    """Direct logit attribution per prompt and component.

    ``values``: dims ``(prompt, component)``; the components partition the
    final residual stream, so they sum to the answer logit (or logit
    difference) minus the unembedding bias. Coordinates on ``component``:
    ``kind`` (one of :data:`ComponentKind`), ``comp_layer``, ``comp_head``,
    ``comp_neuron`` (-1 where not applicable). Extras: ``mean``, ``ci_low``,
    ``ci_high`` over prompts (bootstrap), and ``digit_<i>``: the mean over prompts of answer
    token ``i`` alone (:meth:`per_digit`); ``values`` sum the answer tokens.
    """

    metric_name = "dla"

    def per_digit(self) -> xr.DataArray:
        """Mean DLA of each answer token, ``(digit, component)`` (``digit`` 0 = first written)."""
        names = sorted((k for k in self.extras if k.startswith("digit_")), key=lambda k: int(k[6:]))
        if not names:
            return self.extras["mean"].expand_dims(digit=[0])
        return xr.concat([self.extras[k] for k in names], dim="digit").assign_coords(digit=np.arange(len(names)))

    def _select(self, kind: str) -> xr.DataArray:
        return self.values.isel(component=np.flatnonzero(self.values.coords["kind"].values == kind))

    def heads(self) -> xr.DataArray:
        """Head DLA as ``(prompt, layer, head)``."""
        part = self._select("head")
        layers = part.coords["comp_layer"].values
        heads = part.coords["comp_head"].values
        n_l, n_h = layers.max() + 1, heads.max() + 1
        data = part.values.reshape(part.sizes["prompt"], n_l, n_h)
        return xr.DataArray(data, dims=("prompt", "layer", "head"),
                            coords={"layer": np.arange(n_l), "head": np.arange(n_h)})

    def neurons(self, layer: int) -> xr.DataArray:
        """Neuron DLA of one layer as ``(prompt, neuron)``."""
        part = self._select("neuron")
        part = part.isel(component=np.flatnonzero(part.coords["comp_layer"].values == layer))
        return xr.DataArray(part.values, dims=("prompt", "neuron"),
                            coords={"neuron": part.coords["comp_neuron"].values})

    def totals(self) -> xr.DataArray:
        """Per-prompt DLA of whole modules: embeddings, each attention layer (heads +
        bias, labelled as its ``attn_out`` site: ``ATTN0``), each MLP (neurons + bias,
        ``MLP0``), the final norm's bias; ``(prompt, component)``."""
        coords = self.values.coords
        kinds, layers = coords["kind"].values, coords["comp_layer"].values
        groups: dict[str, np.ndarray] = {}
        for kind in ("embed", "pos_embed", "norm_bias"):
            groups[kind] = kinds == kind
        for layer in sorted(set(layers[layers >= 0].tolist())):
            groups[Site("attn_out", layer).label] = np.isin(kinds, ["head", "attn_bias"]) & (layers == layer)
            groups[Site("mlp_out", layer).label] = np.isin(kinds, ["neuron", "mlp_bias"]) & (layers == layer)
        data = np.stack([self.values.values[:, m].sum(1) for m in groups.values()], axis=1)
        return xr.DataArray(data, dims=("prompt", "component"),
                            coords={"prompt": self.values.coords["prompt"].values,
                                    "component": list(groups)})

    def plot(self) -> go.Figure:
        top = self.top(20)
        return go.Figure(
            go.Bar(x=top[self.metric], y=top["component"].astype(str), orientation="h"),
            layout={"title": self.title(), "xaxis_title": "mean DLA", "yaxis": {"autorange": "reversed"}},
        )

    @classmethod
    def example(cls) -> DLAResult:
        rng = np.random.default_rng(0)
        labels = ["embed", "L0H0", "L0H1", "L0 attn bias", "L0N0", "L0 mlp bias"]
        kinds = ["embed", "head", "head", "attn_bias", "neuron", "mlp_bias"]
        values = xr.DataArray(
            rng.normal(size=(3, len(labels))),
            dims=("prompt", "component"),
            coords={"prompt": np.arange(3), "component": labels, "kind": ("component", kinds),
                    "comp_layer": ("component", [-1, 0, 0, 0, 0, 0]),
                    "comp_head": ("component", [-1, 0, 1, -1, -1, -1]),
                    "comp_neuron": ("component", [-1, -1, -1, -1, 0, -1])},
        )
        return cls(values=values, meta=make_meta("direct_logit_attribution", None),
                   extras=_aggregate(values))


def _aggregate(values: xr.DataArray) -> dict[str, xr.DataArray]:
    mean, low, high = bootstrap_ci(values, dim="prompt")
    return {"mean": mean, "ci_low": low, "ci_high": high}


def norm_parameters(model: Model) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The final norm's elementwise weight ``w`` and bias ``b``, and whether it centres.

    Read by calling the norm (any backend): ``b = f(0)``, and ``f(M u)`` for a
    large ±1 vector ``u`` has a scale of ``M`` up to ``eps / M^2``, so it
    returns ``u_centred * w``.
    """
    d = model.shape.d_model
    centres = model.shape.normalization.upper().startswith("LN")
    dtype = model.weights().W_U.dtype
    with torch.no_grad():  # the norm's parameters may require grad
        zero = torch.zeros(1, d, dtype=dtype, device=model.device)
        b = model.final_norm(zero)[0].double()
        u = torch.ones(d, dtype=torch.float64, device=model.device)
        u[1::2] = -1
        big = 1e3
        y = model.final_norm((big * u).to(dtype)[None])[0].double() - b
        uc = u - u.mean() if centres else u
        scale = uc.pow(2).mean().sqrt()
        w = y * scale / uc
    return w, b, centres


def _answer_tokens(model: Model, prompts: PromptSet, answer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The input tokens (the prompt, then every answer token but the last, teacher-forced) and the
    answer tokens ``[prompt, answer]``; answer token ``i`` is predicted at ``prompt_len - 1 + i``."""
    tokenized = tokenize(prompts, model.tokenizer, answer=answer)  # type: ignore[arg-type]
    keep = tokenized.prompt_len + tokenized.answer_len - 1
    return tokenized.tokens[:, :keep].to(model.device), tokenized.answer_tokens.to(model.device)


def _against_tokens(model: Model, against, shape: tuple[int, int], answer: str) -> torch.Tensor | None:
    if against is None:
        return None
    n, n_ans = shape
    if isinstance(against, PromptSet):
        if len(against) != n:
            raise ArithInterpError(f"against has {len(against)} prompts, prompts has {n}")
        other = _answer_tokens(model, against, answer)[1]
        if other.shape != shape:
            raise ArithInterpError(f"against's answers have {other.shape[1]} tokens, the prompts' {n_ans}; "
                                   "use a fixed answer width")
        return other
    tok = torch.as_tensor(against, dtype=torch.long, device=model.device).reshape(-1)
    if tok.numel() == 1:
        tok = tok.expand(n)
    if tok.numel() != n:
        raise ArithInterpError(f"against must be one token or one per prompt ({n}); got {tok.numel()}")
    return tok[:, None].expand(n, n_ans)


def _dla_at(model: Model, tokens: torch.Tensor, pos: int, u: torch.Tensor, norm: tuple) -> torch.Tensor:
    """``[batch, component]``: each component's write at ``pos`` along the unembedding directions
    ``u`` ``[batch, d_model]``, through the final norm with its scale frozen at the real run."""
    s = model.shape
    wts = model.weights()
    w, b, centres = norm
    W_O, W_out = wts.W_O.detach().double(), wts.W_out.detach().double()
    sites = [Site("embed", pos=pos), Site("resid_pre", 0, pos=pos),
             Site("resid_post", s.n_layers - 1, pos=pos), Site("final_resid", pos=pos)]
    for layer in range(s.n_layers):
        sites += [Site("attn_head", layer, pos=pos), Site("attn_out", layer, pos=pos),
                  Site("mlp_post", layer, pos=pos), Site("mlp_out", layer, pos=pos)]
    _, cache = model.run_with_cache(tokens, sites)
    c = {site: t.double() for site, t in cache.items()}
    x = c[Site("resid_post", s.n_layers - 1, pos=pos)]
    y = c[Site("final_resid", pos=pos)] - b
    xc = x - x.mean(-1, keepdim=True) if centres else x
    # The real run's scale: y = xc / scale * w exactly, so it is read off, eps included.
    scale = (xc * w).norm(dim=-1) / y.norm(dim=-1)
    direction = w * u
    if centres:
        direction = direction - direction.mean(-1, keepdim=True)
    direction = direction / scale[:, None]  # [b, d]

    def dla(write: torch.Tensor) -> torch.Tensor:
        return (write * direction).sum(-1)

    embed = c[Site("embed", pos=pos)]
    cols = [dla(embed), dla(c[Site("resid_pre", 0, pos=pos)] - embed)]
    for layer in range(s.n_layers):
        z = c[Site("attn_head", layer, pos=pos)]  # [b, head, d_head]
        heads = (z * torch.einsum("hem,bm->bhe", W_O[layer], direction)).sum(-1)
        cols += list(heads.unbind(1))
        cols.append(dla(c[Site("attn_out", layer, pos=pos)]) - heads.sum(1))
        neurons = c[Site("mlp_post", layer, pos=pos)] * (direction @ W_out[layer].T)
        cols += list(neurons.unbind(1))
        cols.append(dla(c[Site("mlp_out", layer, pos=pos)]) - neurons.sum(1))
    cols.append((b * u).sum(-1))
    return torch.stack(cols, 1).cpu()


def direct_logit_attribution(
    model: Model,
    prompts: PromptSet,
    *,
    answer: AnswerMode = "multi",
    against: PromptSet | int | Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 256,
) -> DLAResult:
    """Each component's direct contribution to the answer logits, summed over the answer's tokens.

    Answer token ``i`` is read where it is predicted (position ``prompt_len - 1 + i``, the earlier
    answer tokens teacher-forced), as patching scores it; ``values`` sum the digits and
    :meth:`DLAResult.per_digit` keeps each one's mean. With one-token answers both modes are the
    classic DLA at the prompt's last position.

    Args:
        model: the model.
        prompts: the task.
        answer: ``"multi"`` (every answer token; the default of every method) or ``"single"``
            (one-token answers only: :class:`~arithinterp.errors.TokenizationError` otherwise).
        against: ``None`` (the answer logits), a token id or one per prompt (subtracted at every
            answer position), or a corrupt :class:`PromptSet` whose answer tokens are subtracted
            digit by digit: the logit difference patching's ``logit_diff`` sums.
        batch_size: prompts per forward pass.
    """
    if answer not in ("single", "multi"):
        raise ArithInterpError(f"answer must be 'multi' or 'single', got {answer!r}")
    if batch_size < 1:
        raise MethodError(f"batch_size must be >= 1, got {batch_size}")
    tokens, ans = _answer_tokens(model, prompts, answer)
    other = _against_tokens(model, against, tuple(ans.shape), answer)
    prompt_len = tokens.shape[1] - ans.shape[1] + 1
    norm = norm_parameters(model)
    W_U = model.weights().W_U.detach().double()
    digits = []
    for i in range(ans.shape[1]):
        rows = []
        for start in range(0, len(ans), batch_size):
            sl = slice(start, start + batch_size)
            u = W_U[:, ans[sl, i]].T
            if other is not None:
                u = u - W_U[:, other[sl, i]].T
            rows.append(_dla_at(model, tokens[sl, :prompt_len + i], prompt_len - 1 + i, u, norm))
        digits.append(torch.cat(rows))
    per = torch.stack(digits, 1).numpy()  # [prompt, digit, component]
    labels, kinds, layers, heads_c, neurons_c = _component_labels(model)
    comp = {"component": labels, "kind": ("component", kinds), "comp_layer": ("component", layers),
            "comp_head": ("component", heads_c), "comp_neuron": ("component", neurons_c)}
    values = xr.DataArray(per.sum(1), dims=("prompt", "component"), coords={"prompt": np.arange(len(ans)), **comp})
    extras = _aggregate(values)
    for i in range(per.shape[1]):  # extras share values' dims: one (component,) mean per answer token
        extras[f"digit_{i}"] = xr.DataArray(per[:, i].mean(0), dims=("component",), coords=comp)
    meta = make_meta("direct_logit_attribution", model, prompts,
                     options={"answer": answer, "against": None if against is None else "given",
                              "batch_size": batch_size, "answer_len": int(ans.shape[1])})
    return DLAResult(values=values, meta=meta, extras=extras)


def _component_labels(model: Model) -> tuple[list, list, list, list, list]:
    s = model.shape
    labels, kinds, layers, heads, neurons = ["embed", "pos_embed"], ["embed", "pos_embed"], [-1, -1], [-1, -1], [-1, -1]

    def add(label, kind, layer=-1, head=-1, neuron=-1):
        labels.append(label)
        kinds.append(kind)
        layers.append(layer)
        heads.append(head)
        neurons.append(neuron)

    for layer in range(s.n_layers):
        for h in range(s.n_heads):
            add(Site("attn_head", layer, head=h).label, "head", layer, head=h)
        add(f"L{layer} attn bias", "attn_bias", layer)
        for n in range(s.d_mlp):
            add(Site("mlp_post", layer, neuron=n).label, "neuron", layer, neuron=n)
        add(f"L{layer} mlp bias", "mlp_bias", layer)
    add("final norm bias", "norm_bias")
    return labels, kinds, layers, heads, neurons


# -- comparative neuron analysis (Yu & Ananiadou, EMNLP 2024) -----------------------------


class CNAResult(Result):
    """Comparative neuron analysis of one layer's neurons against an ablated head.

    ``values``: dims ``(prompt, neuron)``, ``CNA = Imp_clean − Imp_ablated``
    where ``Imp(v_i) = log p(answer | v_i + h_res) − log p(answer | h_res)``
    read through the final norm (its scale frozen at the clean run), ``v_i =
    m_i W_out[i]`` and ``h_res`` the post-attention residual of the layer.
    Extras ``imp_clean`` and ``imp_ablated``. Scalar coords ``layer``,
    ``ablated_layer``, ``ablated_head``.
    """

    metric_name = "cna"

    @classmethod
    def example(cls) -> CNAResult:
        rng = np.random.default_rng(0)
        coords = {"prompt": np.arange(3), "neuron": np.arange(4), "layer": 0,
                  "ablated_layer": 0, "ablated_head": 1}
        clean = xr.DataArray(rng.normal(size=(3, 4)), dims=("prompt", "neuron"), coords=coords)
        ablated = clean * 0.5
        return cls(values=clean - ablated, meta=make_meta("comparative_neuron_analysis", None),
                   extras={"imp_clean": clean, "imp_ablated": ablated})


def _neuron_importance(model, tokens, ans, layer, patches, scale, w, b, centres, batch_size):
    """Imp of every neuron of ``layer`` per prompt: ``[prompt, neuron]`` (double)."""
    wts = model.weights()
    W_U, b_U = wts.W_U.detach().double(), wts.b_U.detach().double()
    W_out = wts.W_out[layer].detach().double()
    if centres:
        W_out = W_out - W_out.mean(-1, keepdim=True)
    gain = (W_out * w) @ W_U  # [neuron, vocab]: a neuron's unit write through the norm
    mid, post = Site("resid_mid", layer, pos=-1), Site("mlp_post", layer, pos=-1)
    out = []
    for start in range(0, len(ans), batch_size):
        sl = slice(start, start + batch_size)
        _, cache = model.run_with_cache(tokens[sl], [mid, post], patches)
        h = cache[mid].double()
        hc = h - h.mean(-1, keepdim=True) if centres else h
        s = scale[sl, None]
        base = (hc / s * w + b) @ W_U + b_U  # [b, vocab]
        logits = base[:, None] + (cache[post].double() / s)[..., None] * gain  # [b, neuron, vocab]
        a = ans[sl]
        logp = torch.log_softmax(logits, -1)[torch.arange(len(a)), :, a]
        out.append((logp - torch.log_softmax(base, -1).gather(1, a[:, None])).cpu())
    return torch.cat(out)


def comparative_neuron_analysis(
    model: Model,
    prompts: PromptSet,
    *,
    head: tuple[int, int],
    layer: int | None = None,
    batch_size: int = 32,
) -> CNAResult:
    """CNA of ``layer``'s neurons (default: the last) with and without ``head``.

    Args:
        model: the model.
        prompts: a task whose answers are one token each.
        head: ``(layer, head)`` zero-ablated (its output z, at every position).
        layer: the MLP layer whose neurons are compared (default: the final one).
        batch_size: prompts per forward pass.
    """
    s = model.shape
    layer = s.n_layers - 1 if layer is None else layer
    if not 0 <= layer < s.n_layers:
        raise ArithInterpError(f"layer must lie in [0, {s.n_layers}), got {layer}")
    head_site = Site("attn_head", head[0], head=head[1]).validate(s)
    tokens, ans = _answer_tokens(model, prompts, "single")
    ans = ans[:, 0]
    w, b, centres = norm_parameters(model)
    last = Site("resid_post", s.n_layers - 1, pos=-1)
    final = Site("final_resid", pos=-1)
    scales = []
    for start in range(0, len(ans), batch_size):
        _, cache = model.run_with_cache(tokens[start : start + batch_size], [last, final])
        x, y = cache[last].double(), cache[final].double() - b
        xc = x - x.mean(-1, keepdim=True) if centres else x
        scales.append((xc * w).norm(dim=-1) / y.norm(dim=-1))
    scale = torch.cat(scales)  # the clean run's final-norm scale, used for both runs
    clean = _neuron_importance(model, tokens, ans, layer, {}, scale, w, b, centres, batch_size)
    ablated = _neuron_importance(model, tokens, ans, layer, {head_site: torch.zeros(())},
                                 scale, w, b, centres, batch_size)
    coords = {"prompt": np.arange(len(ans)), "neuron": np.arange(s.d_mlp), "layer": layer,
              "ablated_layer": head[0], "ablated_head": head[1]}
    dims = ("prompt", "neuron")
    imp_clean = xr.DataArray(clean.numpy(), dims=dims, coords=coords)
    imp_ablated = xr.DataArray(ablated.numpy(), dims=dims, coords=coords)
    meta = make_meta("comparative_neuron_analysis", model, prompts,
                     options={"head": list(head), "layer": layer, "batch_size": batch_size})
    return CNAResult(values=imp_clean - imp_ablated, meta=meta,
                     extras={"imp_clean": imp_clean, "imp_ablated": imp_ablated})


# -- registration ---------------------------------------------------------------------------------


class DLAOptions(Options):
    """Options of :func:`direct_logit_attribution` from a pipeline (the answer logits alone)."""

    answer: AnswerMode = "multi"
    batch_size: int = Field(256, ge=1)


def _report_dla(ctx: RunContext) -> dict:
    """Like with like: the logit difference of clean over corrupt answer tokens, read at every answer
    position under the clean answer's teacher forcing and summed, as the report's patching scores it."""
    pairs = ctx.require_pairs()
    try:
        return {"dla": direct_logit_attribution(ctx.model, pairs.clean, answer=ctx.answer, against=pairs.corrupt)}
    except ArithInterpError as err:
        raise NotApplicable(f"direct logit attribution: {err}") from err


def _read_dla(result: DLAResult, sites: list[Site]) -> np.ndarray:
    """Mean DLA of each head / neuron site (matched on the component's kind, layer and index)."""
    mean = result.extras["mean"]
    kinds = mean.coords["kind"].values
    layers = mean.coords["comp_layer"].values
    index = {("head", int(layers[i]), int(mean.coords["comp_head"].values[i])): i
             for i in range(len(kinds)) if kinds[i] == "head"}
    index.update({("neuron", int(layers[i]), int(mean.coords["comp_neuron"].values[i])): i
                  for i in range(len(kinds)) if kinds[i] == "neuron"})
    data = np.asarray(mean.values, dtype=float)
    keys = [("head", s.layer, s.head) if s.head is not None else ("neuron", s.layer, s.neuron) for s in sites]
    return np.array([data[index[k]] if k in index else np.nan for k in keys])


register(MethodSpec(
    name="dla", function=direct_logit_attribution, inputs="prompts", result=DLAResult, options=DLAOptions,
    report=ReportView(
        run=_report_dla,
        columns=ReportColumn.pair("dla", "dla", "dla", _read_dla, "mean direct logit attribution"),
        figures={"dla": "Direct logit attribution"},
        order=40,
    ),
))
