"""Diagnosis: where attribution's error against exact patching lives on a zoo model.

For every head x position cell of a zoo model's sweep (the calibration protocol of
``benchmarks/attribution.py``: 32 prompts of its own task, ``random`` pairs, denoising,
logit difference), it computes estimates that are exact up to a point of the network and
first order after it, and compares each with the exact sweep (Spearman over all cells and
over the cells with at least 1% of the largest exact effect, Pearson):

- ``exact->resid_mid(L-1)``: the cell is patched and the model run exactly up to the last
  layer's ``resid_mid`` (everything before its MLP, so the last attention layer's patterns
  are recomputed), then the change there is dotted with the metric's gradient at that site,
  with frozen norms (and, for contrast, without);
- ``exact->resid_pre(L-1)``: the same, linearising from the last layer's input;
- the calibrated methods (frozen-norm AtP, IG on activations) beside them.

An estimate that is exact through a point and still misranks the cells shows that the
error lives after that point. This is a diagnosis, not a method: it costs one forward pass
per cell.

``--ig-steps 1,5,20,50`` instead runs IG on activations at each step count, to show where
its estimate converges (to the path integral over the whole layer moved at once, not to
single-cell patching).

    python benchmarks/attribution_diagnosis.py [--models add-5d,mul-3d] [--ig-steps 1,5,20,50]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from attribution import zoo_inputs  # benchmarks/attribution.py, beside this script
from scipy import stats

from arithinterp.methods.attribution import _effect, attribution_patch, compare_with_exact
from arithinterp.methods.metrics import resolve_metric, tokenize_pairs
from arithinterp.methods.patching import patch_activations
from arithinterp.methods.sweep import sweep_sites
from arithinterp.models import Site
from arithinterp.models.model import select
from arithinterp.models.replacement import Rules, replacement_model


def exact_then_linear(model, batch, sites, clean, target: Site, grad_model) -> np.ndarray:
    """Per cell: the mean over pairs of grad . (change at ``target``), the change exact
    (``clean``: each site's activation on the clean prompts)."""
    _, metric = resolve_metric("logit_diff")
    ap = batch.answer_positions

    def total(logits):
        return metric(logits[:, ap], batch.clean_answer, batch.corrupt_answer).sum()

    g = grad_model.gradients(batch.corrupt, [target], total)
    base, grad = g.activations[target], g.gradients[target]
    out = []
    for site, value in zip(sites, clean):
        _, cache = model.run_with_cache(batch.corrupt, [target], patches={site: value})
        out.append(float((grad * (cache[target] - base)).sum()) / len(batch.clean))
    return np.array(out)


def _protocol(name: str):
    """The calibration protocol's model, pairs (tokenized), sweep options and exact sweep."""
    model, pairs, answer = zoo_inputs(name, 32)
    batch = tokenize_pairs(pairs, model.tokenizer, answer=answer)
    common = dict(kind="attn_head", per_position=True, answer=answer, batch_size=len(batch.clean), n_boot=1,
                  progress=False)
    return model, batch, common, patch_activations(model, batch, engine="fast", **common)


def diagnose(name: str) -> None:
    model, batch, common, exact_result = _protocol(name)
    exact = np.asarray(_effect(exact_result).values, float).ravel()
    sites, _ = sweep_sites(model, "attn_head", per_position=True, seq_len=batch.seq_len)
    last = model.shape.n_layers - 1
    frozen = replacement_model(model, Rules(freeze_norm=True))
    _, cache = model.run_with_cache(batch.clean, list(dict.fromkeys(s.whole() for s in sites)))
    clean = [select(cache[site.whole()], site) for site in sites]
    estimates = {
        label: exact_then_linear(model, batch, sites, clean, Site(kind, last), grads)
        for label, kind, grads in (("exact->resid_mid(L-1) frozen", "resid_mid", frozen),
                                   ("exact->resid_mid(L-1)", "resid_mid", model),
                                   ("exact->resid_pre(L-1) frozen", "resid_pre", frozen))
    }
    for method, freeze in (("atp", True), ("ig_activations", False), ("ig_activations", True)):
        result = attribution_patch(model, batch, method=method, freeze_norm=freeze, ig_steps=5, **common)
        estimates[f"{method} freeze_norm={freeze}"] = np.asarray(_effect(result).values, float).ravel()
    major = np.abs(exact) >= 0.01 * np.abs(exact).max()
    for label, est in estimates.items():
        print(f"model={name} estimate={label!r} spearman={stats.spearmanr(est, exact)[0]:.3f} "
              f"spearman_major={stats.spearmanr(est[major], exact[major])[0]:.3f} "
              f"pearson={stats.pearsonr(est, exact)[0]:.3f} n_major={int(major.sum())}/{exact.size}")


def ig_steps_ceiling(name: str, steps: list[int]) -> None:
    """IG on activations at more and more steps: where it converges, against exact patching."""
    model, batch, common, exact = _protocol(name)
    for freeze in (False, True):
        for m in steps:
            result = attribution_patch(model, batch, method="ig_activations", freeze_norm=freeze, ig_steps=m, **common)
            c = compare_with_exact(result, exact, k=10)
            print(f"model={name} estimate='ig_activations freeze_norm={freeze}' ig_steps={m} "
                  f"spearman={c['spearman']:.3f} spearman_major={c['spearman_major']:.3f} "
                  f"top10={c['top_k_overlap']:.1f} pearson={c['pearson']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="add-5d,mul-3d", help="comma-separated zoo model names")
    parser.add_argument("--ig-steps", default=None,
                        help="instead: IG on activations at these step counts (e.g. 1,5,20,50)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models.split(","):
        if args.ig_steps:
            ig_steps_ceiling(name, [int(m) for m in args.ig_steps.split(",")])
        else:
            diagnose(name)


if __name__ == "__main__":
    main()
