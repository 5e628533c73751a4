"""The tuned lens (Belrose et al. 2023): a learned affine translator per lens depth.

The logit lens reads the residual stream after ``d`` blocks as if it were the
final one. The tuned lens first maps it through an affine translator
``h -> h @ W_d + b_d`` (``W_d`` initialised to the identity, ``b_d`` to zero),
trained to minimise ``KL(final logits || translated logits)`` over every
position of the task's prompts, then applies the final norm and unembedding.
The model is frozen; only the translators learn.

The final depth's translator is kept at the identity and not trained: there
the residual stream *is* the final one, so both lenses equal the model's
output exactly (KL 0).

:func:`lens_kl` reports, per depth, the mean KL of each lens to the model's
final distribution, the number the tuned lens is meant to lower.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from pydantic import Field
from safetensors.torch import load_file, save_file

from arithinterp.errors import ArithInterpError, ConfigError, MethodError, ResultError
from arithinterp.methods._common import make_meta, token_batches
from arithinterp.methods.lens import LensResult, Readout, depth_coords, lens_sites, run_lens
from arithinterp.methods.registry import MethodSpec, Options, RunContext, register
from arithinterp.models import Model
from arithinterp.progress_bars import tqdm
from arithinterp.results import Result, ResultMeta
from arithinterp.results.io import atomic_dir
from arithinterp.tasks import PromptSet, tokenize

__all__ = ["LensKLResult", "TunedLens", "lens_kl", "train_tuned_lens", "tuned_lens"]

_WEIGHTS_FILE = "translators.safetensors"
_META_FILE = "tuned_lens.json"
_FORMAT = "arithinterp.tuned_lens"


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class TunedLens:
    """Trained translators for lens depths ``0..n_layers``.

    ``weight``: ``[depth, d_model, d_model]``, ``bias``: ``[depth, d_model]``
    (float32, CPU); a residual vector ``h`` at depth ``d`` becomes
    ``h @ weight[d] + bias[d]``. ``loss`` is the training loss (mean KL over
    the trained depths) per step. ``meta`` records the model, data set, seed
    and options.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    meta: ResultMeta
    loss: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        w, b = self.weight, self.bias
        if w.ndim != 3 or w.shape[1] != w.shape[2] or b.shape != w.shape[:2]:
            raise ResultError(
                f"TunedLens needs weight [depth, d, d] and bias [depth, d], got "
                f"{tuple(w.shape)} and {tuple(b.shape)}"
            )

    @property
    def n_depths(self) -> int:
        return int(self.weight.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.weight.shape[1])

    def translate(self, resid: torch.Tensor) -> torch.Tensor:
        """Translate stacked residual streams ``[batch, depth, ..., d_model]``."""
        w = self.weight.to(resid.device, resid.dtype)
        b = self.bias.to(resid.device, resid.dtype)
        x = resid.movedim(1, 0)  # [depth, batch, ..., d]
        shape = x.shape
        y = torch.bmm(x.reshape(shape[0], -1, shape[-1]), w) + b[:, None]
        return y.reshape(shape).movedim(0, 1)

    def readout(self, model: Model) -> Readout:
        """The lens readout for :func:`~arithinterp.methods.lens.run_lens`: translate, then unembed."""
        self.check(model)
        return lambda resid: model.unembed(self.translate(resid))

    def check(self, model: Model) -> None:
        """Raise when the translators do not fit ``model``."""
        n, d = model.shape.n_layers + 1, model.shape.d_model
        if (self.n_depths, self.d_model) != (n, d):
            raise ArithInterpError(
                f"this tuned lens has {self.n_depths} depths of width {self.d_model} "
                f"(trained on {self.meta.model}); {model.name} needs {n} depths of width {d}"
            )

    def save(self, path: str | Path) -> Path:
        """Write ``path/translators.safetensors`` and ``path/tuned_lens.json`` atomically."""
        with atomic_dir(path) as tmp:
            save_file(
                {"weight": self.weight.contiguous(), "bias": self.bias.contiguous()},
                str(tmp / _WEIGHTS_FILE),
            )
            info = {"format": _FORMAT, "meta": self.meta.to_dict(), "loss": list(self.loss)}
            (tmp / _META_FILE).write_text(json.dumps(info, indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> TunedLens:
        path = Path(path)
        if not (path / _WEIGHTS_FILE).is_file() or not (path / _META_FILE).is_file():
            raise ResultError(
                f"{path} is not a saved tuned lens: it needs {_WEIGHTS_FILE} and {_META_FILE}"
            )
        info = json.loads((path / _META_FILE).read_text())
        if info.get("format") != _FORMAT:
            raise ResultError(f"{path / _META_FILE} is not a tuned lens ({info.get('format')!r})")
        tensors = load_file(str(path / _WEIGHTS_FILE))
        return cls(
            weight=tensors["weight"],
            bias=tensors["bias"],
            meta=ResultMeta.from_dict(info["meta"]),
            loss=tuple(float(x) for x in info["loss"]),
        )

    def __repr__(self) -> str:
        last = f", final loss={self.loss[-1]:.4g}" if self.loss else ""
        return f"TunedLens(model={self.meta.model!r}, depths={self.n_depths}, d_model={self.d_model}{last})"


def _residuals(model: Model, prompts: PromptSet, batch_size: int) -> torch.Tensor:
    """Residual streams at every lens depth and position: ``[depth, n_positions, d_model]``."""
    tokenized = tokenize(prompts, model.tokenizer, answer="multi")
    sites = lens_sites(model)
    chunks = []
    for tokens, _ in token_batches(tokenized, batch_size):
        _, cache = model.run_with_cache(tokens, sites)
        chunks.append(torch.stack([cache[s] for s in sites]).flatten(1, 2).float())
    return torch.cat(chunks, dim=1)


def train_tuned_lens(
    model: Model,
    prompts: PromptSet,
    *,
    steps: int = 500,
    lr: float = 1e-2,
    batch_positions: int = 1024,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> TunedLens:
    """Train one affine translator per lens depth (the last stays the identity).

    Args:
        model: the (frozen) model.
        prompts: a task; every position of prompt + answer is a training example.
        steps: Adam steps.
        lr: Adam learning rate.
        batch_positions: positions per step (sampled with ``seed``).
        seed: seeds the position sampling; training is deterministic given it.
        batch_size: prompts per forward pass when caching the residual stream.
        progress: show a progress bar.
    """
    if steps < 0 or lr <= 0 or batch_positions < 1:
        raise MethodError(f"need steps >= 0, lr > 0, batch_positions >= 1; got {steps}, {lr}, {batch_positions}")
    n_layers, d = model.shape.n_layers, model.shape.d_model
    with torch.no_grad():
        resid = _residuals(model, prompts, batch_size)  # [depth, N, d]
        target = torch.log_softmax(model.unembed(resid[-1]).float(), dim=-1)
    n = resid.shape[1]
    weight = torch.eye(d).repeat(n_layers, 1, 1).to(resid.device).requires_grad_(True)
    bias = torch.zeros(n_layers, d, device=resid.device, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    with model.enabled(requires_grad=False):
        for _ in tqdm(range(steps), desc="tuned lens", disable=not progress, leave=False):
            idx = torch.randint(n, (min(batch_positions, n),), generator=gen).to(resid.device)
            x = resid[:n_layers, idx]  # [layer, b, d]
            logp = torch.log_softmax(model.unembed(torch.bmm(x, weight) + bias[:, None]).float(), -1)
            tgt = target[idx]
            kl = (tgt.exp() * (tgt - logp)).sum(-1).mean()  # mean over depths and positions
            opt.zero_grad()
            kl.backward()
            opt.step()
            losses.append(float(kl.detach()))
    eye = torch.eye(d)[None]
    meta = make_meta(
        "tuned_lens", model, prompts, seed=seed,
        options={"steps": steps, "lr": lr, "batch_positions": batch_positions},
    )
    return TunedLens(
        weight=torch.cat([weight.detach().cpu(), eye]),
        bias=torch.cat([bias.detach().cpu(), torch.zeros(1, d)]),
        meta=meta,
        loss=tuple(losses),
    )


def tuned_lens(
    model: Model,
    prompts: PromptSet,
    lens: TunedLens,
    *,
    k: int = 5,
    batch_size: int = 256,
    progress: bool = True,
) -> LensResult:
    """The tuned lens read like :func:`~arithinterp.methods.logit_lens` (same layout)."""
    return run_lens(
        model, prompts, lens.readout(model), method="tuned_lens", k=k, batch_size=batch_size,
        progress=progress, extra_meta={"tuned_lens": lens.meta.to_dict()},
    )


class LensKLResult(Result):
    """Mean ``KL(final || lens)`` (nats) per lens depth, over prompts and positions.

    ``values``: dims ``(metric, layer)``; ``metric`` names the lens
    (``logit_lens``, ``tuned_lens``), ``layer`` is the lens depth ``0..n_layers``
    with coordinates ``site`` and ``layer_label`` (as in :class:`LensResult`).
    """

    metric_name = "kl"

    @classmethod
    def example(cls) -> LensKLResult:
        kl = np.array([[3.0, 1.0, 0.0], [1.0, 0.3, 0.0]])
        return cls(values=_kl_array(kl, ["logit_lens", "tuned_lens"]), meta=make_meta("lens_kl", None))


def _kl_array(kl: np.ndarray, names: list[str]) -> xr.DataArray:
    n_layers = kl.shape[1] - 1
    coords = {"metric": names, **depth_coords(n_layers)}
    return xr.DataArray(kl, dims=("metric", "layer"), coords=coords)


def lens_kl(
    model: Model,
    prompts: PromptSet,
    tuned: TunedLens | None = None,
    *,
    batch_size: int = 256,
) -> LensKLResult:
    """KL of the model's final distribution to each lens, per depth (logit lens, and tuned if given)."""
    readouts = {"logit_lens": model.unembed}
    if tuned is not None:
        readouts["tuned_lens"] = tuned.readout(model)
    n_layers = model.shape.n_layers
    total = torch.zeros(len(readouts), n_layers + 1, dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for chunk in _residual_batches(model, prompts, batch_size):  # [b, depth, pos, d]
            final = torch.log_softmax(model.unembed(chunk[:, -1]).double(), -1)
            for i, readout in enumerate(readouts.values()):
                logp = torch.log_softmax(readout(chunk).double(), -1)
                kl = (final.exp()[:, None] * (final[:, None] - logp)).sum(-1)  # [b, depth, pos]
                total[i] += kl.sum((0, 2)).cpu()
            count += chunk.shape[0] * chunk.shape[2]
    meta = make_meta(
        "lens_kl", model, prompts, options={"batch_size": batch_size},
        extra={"tuned_lens": tuned.meta.to_dict()} if tuned is not None else None,
    )
    return LensKLResult(values=_kl_array((total / count).numpy(), list(readouts)), meta=meta)


def _residual_batches(model: Model, prompts: PromptSet, batch_size: int):
    tokenized = tokenize(prompts, model.tokenizer, answer="multi")
    sites = lens_sites(model)
    for tokens, _ in token_batches(tokenized, batch_size):
        _, cache = model.run_with_cache(tokens, sites)
        yield torch.stack([cache[s] for s in sites], dim=1)


# -- registration ---------------------------------------------------------------------------------


class TunedLensOptions(Options):
    """A tuned lens trained on the first ``train_fraction`` of the prompts
    (:func:`train_tuned_lens`, ``train_steps`` its ``steps``), read (:func:`tuned_lens`, ``k``) and
    compared with the logit lens by KL (:func:`lens_kl`) on the rest."""

    train_steps: int = Field(500, ge=1)
    lr: float = Field(0.01, gt=0)
    batch_positions: int = Field(1024, ge=1)
    train_fraction: float = Field(0.5, gt=0, lt=1)
    k: int = Field(5, ge=1, le=50)
    batch_size: int = Field(256, ge=1)


def _lens_split(ctx: RunContext, options: TunedLensOptions) -> tuple[PromptSet, PromptSet]:
    n_train = round(options.train_fraction * len(ctx.prompts))
    if not 1 <= n_train < len(ctx.prompts):
        raise ConfigError(f"train_fraction: {options.train_fraction} of {len(ctx.prompts)} prompts leaves "
                          "no training or no held-out prompts; raise the task's n")
    return ctx.prompts[:n_train], ctx.prompts[n_train:]


def _run_tuned_lens(ctx: RunContext, options: TunedLensOptions) -> dict:
    train, held_out = _lens_split(ctx, options)
    lens = train_tuned_lens(ctx.model, train, steps=options.train_steps, lr=options.lr,
                            batch_positions=options.batch_positions, seed=ctx.seed,
                            batch_size=options.batch_size, progress=ctx.progress)
    return {
        "lens": lens,
        "tuned_lens": tuned_lens(ctx.model, held_out, lens, k=options.k, batch_size=options.batch_size,
                                 progress=ctx.progress),
        "kl": lens_kl(ctx.model, held_out, lens, batch_size=options.batch_size),
    }


register(MethodSpec(
    name="tuned_lens", function=train_tuned_lens, inputs="prompts", result=(TunedLens, LensResult, LensKLResult),
    options=TunedLensOptions, aliases={"train_steps": "steps"}, step_only=frozenset({"train_fraction", "k"}),
    run=_run_tuned_lens, check=_lens_split,
))
