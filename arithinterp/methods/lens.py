"""The logit lens (nostalgebraist 2020): read the residual stream through the unembedding.

At lens depth ``d`` the residual stream after ``d`` blocks (``resid_pre`` of
block ``d``; for ``d = n_layers`` the final residual stream) goes through the
model's final norm and unembedding. At the last depth this is exactly the
model's own output, which the tests check.

For every prompt, depth and position the result holds the probability and
the rank of the token that actually comes next in the teacher-forced
sequence (prompt followed by the answer), so answer positions show when the
answer becomes decodable. The coordinate ``is_answer`` marks them.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
import xarray as xr
from tqdm.auto import tqdm

from arithinterp.methods._common import make_meta, token_batches
from arithinterp.models import Model, Site
from arithinterp.results import Result
from arithinterp.tasks import PromptSet, tokenize


def lens_sites(model: Model) -> list[Site]:
    """The residual-stream sites read at depths ``0..n_layers``."""
    n = model.shape.n_layers
    return [Site("resid_pre", layer) for layer in range(n)] + [Site("resid_post", n - 1)]


class LensResult(Result):
    """Logit-lens probability of the next token.

    ``values``: dims ``(prompt, layer, pos)``; ``layer`` is the lens depth
    (number of blocks applied, ``0..n_layers``), ``pos`` the position whose
    next-token prediction is read. Coordinates: ``pos_token`` (the token
    predicted at that position, from the first prompt), ``is_answer``
    (whether it is an answer token), ``layer_label``. Extras: ``rank`` (0 =
    top-1) and ``top_tokens`` (the top-k decoded tokens, space-separated).
    """

    metric_name = "prob"

    @property
    def answer(self) -> xr.DataArray:
        """The lens restricted to answer positions."""
        return self.values.isel(pos=np.flatnonzero(self.values.coords["is_answer"].values))

    def plot(self) -> go.Figure:
        mean = self.values.mean("prompt")
        pos_labels = [
            f"{p}:{t}{'*' if a else ''}"
            for p, t, a in zip(
                mean.coords["pos"].values,
                mean.coords["pos_token"].values,
                mean.coords["is_answer"].values,
            )
        ]
        hover = None
        if "top_tokens" in self.extras:
            hover = self.extras["top_tokens"].isel(prompt=0).transpose("layer", "pos").values
        fig = go.Figure(
            go.Heatmap(
                z=mean.transpose("layer", "pos").values,
                x=pos_labels,
                y=list(mean.coords["layer_label"].values),
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                customdata=hover,
                hovertemplate="depth %{y}<br>predicting %{x}<br>p = %{z:.3f}"
                + ("<br>top (prompt 0): %{customdata}" if hover is not None else "")
                + "<extra></extra>",
                colorbar={"title": "p(next)"},
            )
        )
        fig.update_layout(
            title=f"logit lens: {self.meta.model} (mean over {self.values.sizes['prompt']} prompts; * = answer)",
            xaxis_title="position: token it predicts",
            yaxis_title="lens depth",
        )
        return fig

    @classmethod
    def example(cls) -> LensResult:
        rng = np.random.default_rng(0)
        probs = rng.random((4, 3, 5))
        values = xr.DataArray(probs, dims=("prompt", "layer", "pos"), coords=_coords(
            n_prompts=4, n_layers=2, targets=["1", "+", "2", "=", "3"], answer_len=1
        ))
        rank = xr.DataArray(rng.integers(0, 9, probs.shape), dims=values.dims, coords=values.coords)
        top = xr.DataArray(np.full(probs.shape, "1 2 3"), dims=values.dims, coords=values.coords)
        return cls(values=values, meta=make_meta("logit_lens", None), extras={"rank": rank, "top_tokens": top})


def _coords(*, n_prompts: int, n_layers: int, targets: list[str], answer_len: int) -> dict:
    n_pos = len(targets)
    labels = ["embed"] + [f"after L{i}" for i in range(n_layers)]
    return {
        "prompt": np.arange(n_prompts),
        "layer": np.arange(n_layers + 1),
        "pos": np.arange(n_pos),
        "layer_label": ("layer", np.array(labels)),
        "pos_token": ("pos", np.array(targets)),
        "is_answer": ("pos", np.arange(n_pos) >= n_pos - answer_len),
    }


def logit_lens(
    model: Model,
    prompts: PromptSet,
    *,
    k: int = 5,
    batch_size: int = 256,
    progress: bool = True,
) -> LensResult:
    """Probability and rank of the next token at every lens depth and position.

    Args:
        model: the model.
        prompts: a generated task; the answer follows each prompt (teacher forcing).
        k: how many top decoded tokens to record per cell.
        batch_size: prompts per forward pass.
        progress: show a progress bar.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    tokenized = tokenize(prompts, model.tokenizer, answer="multi")
    sites = lens_sites(model)
    vocab = model.tokenizer.convert_ids_to_tokens(list(range(model.shape.d_vocab)))
    vocab = np.array([str(t) for t in vocab], dtype=object)
    probs, ranks, tops = [], [], []
    for tokens, _ in tqdm(
        token_batches(tokenized, batch_size), desc="logit lens", disable=not progress, leave=False
    ):
        _, cache = model.run_with_cache(tokens, sites)
        resid = torch.stack([cache[s] for s in sites], dim=1)[:, :, :-1]  # [b, layer, pos, d]
        with torch.no_grad():
            logp = torch.log_softmax(model.unembed(resid).double(), dim=-1)
        target = tokens[:, 1:].unsqueeze(1).expand(-1, len(sites), -1)
        target_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        probs.append(target_logp.exp().cpu())
        ranks.append((logp > target_logp.unsqueeze(-1)).sum(-1).cpu())
        top_ids = logp.topk(min(k, logp.shape[-1]), dim=-1).indices.cpu().numpy()
        tops.append(np.apply_along_axis(lambda ids: " ".join(vocab[ids]), -1, top_ids))
    first = tokenized.tokens[0, 1:].tolist()
    coords = _coords(
        n_prompts=len(prompts),
        n_layers=model.shape.n_layers,
        targets=[str(t) for t in model.tokenizer.convert_ids_to_tokens(first)],
        answer_len=tokenized.answer_tokens.shape[1],
    )
    dims = ("prompt", "layer", "pos")
    values = xr.DataArray(torch.cat(probs).numpy(), dims=dims, coords=coords)
    extras = {
        "rank": xr.DataArray(torch.cat(ranks).numpy(), dims=dims, coords=coords),
        "top_tokens": xr.DataArray(np.concatenate(tops).astype(str), dims=dims, coords=coords),
    }
    meta = make_meta("logit_lens", model, prompts, options={"k": k, "batch_size": batch_size})
    return LensResult(values=values, meta=meta, extras=extras)
