"""Compare the per-operator circuits of zoo:ops-2d-tok (the four runs of this folder).

    python experiments/operators-ops-2d-tok/compare.py [runs] [--json out.json]

Reads runs/operators-ops-2d-tok-{add,sub,mul,floordiv}/ (run each YAML of this folder first) and
prints, as Markdown tables:

- per operator: accuracy, the head/MLP circuit (faithfulness, heads needed), the neuron circuit
  (neurons per layer), heuristic neurons (classified at t = 0.6, all and among the neuron
  circuit's: Nikankin et al.'s "top neurons"), the knockouts of MLP1's commonest heuristics, CNA's
  head;
- between operators: Jaccard overlap of circuit heads and MLPs, of neuron-circuit neurons, of
  heuristic neurons and of top-CNA neurons; which neurons every operator's neuron circuit shares
  and which only one operator uses, with the heuristic each implements per operator.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from arithinterp.results import Result

OPERATORS = {"add": "+", "sub": "−", "mul": "×", "floordiv": "÷"}
#: Neurons per operator counted as "top CNA" neurons (largest mean CNA over the prompts).
TOP_CNA = 20
#: A "specific" heuristic holds at most this share of the grid's problems (the widest families,
#: m mod 2 and ranges over a third of an operand, hold up to 55% and pass t = 0.6 on weak tuning).
SPECIFIC = 0.1


def load_runs(runs: Path) -> dict[str, dict[str, Result]]:
    """Every step result of the four runs: ``{operator: {step/part: Result}}``."""
    out: dict[str, dict[str, Result]] = {}
    for op in OPERATORS:
        run = runs / f"operators-ops-2d-tok-{op}"
        if not (run / "config.yaml").is_file():
            raise SystemExit(f"no run at {run}: arithinterp run experiments/operators-ops-2d-tok/{op}.yaml")
        parts = {}
        for step in ("evaluate", "circuit", "neuron_circuit"):
            parts[step] = Result.load(run / step)
        for layer in (0, 1):
            for part in ("classification", "knockout"):
                folder = run / f"heuristics_l{layer}" / part
                if folder.is_dir():
                    parts[f"heuristics_l{layer}/{part}"] = Result.load(folder)
        for part in ("heads", "cna"):
            parts[f"cna/{part}"] = Result.load(run / "cna" / part)
        out[op] = parts
    return out


def _classified(res: dict[str, Result], max_share: float = 1.0) -> dict[str, list[str]]:
    """``{neuron label: heuristics it implements}`` over both MLP layers, counting only the
    heuristics that hold at most ``max_share`` of the grid's problems."""
    out = {}
    for layer in (0, 1):
        c = res[f"heuristics_l{layer}/classification"]
        share = c.values.coords["size"].values / c.meta.options["n_problems"]
        imp = c.extras["implements"].isel({"class": np.flatnonzero(share <= max_share)})
        for n in imp.coords["neuron"].values[imp.any("class").values]:
            out[f"L{layer}N{int(n)}"] = [h for h in c.neuron_heuristics(int(n)) if h in imp.coords["class"].values]
    return out


def _families(res: dict[str, Result]) -> dict[str, int]:
    """Classified neurons per family (a neuron counts once per family it has a heuristic of)."""
    counts: dict[str, int] = {}
    for layer in (0, 1):
        imp = res[f"heuristics_l{layer}/classification"].extras["implements"]
        per = imp.groupby("family").any("class").sum("neuron").to_series()
        for fam, n in per.items():
            counts[str(fam)] = counts.get(str(fam), 0) + int(n)
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _top_cna(res: dict[str, Result], k: int = TOP_CNA) -> list[str]:
    cna = res["cna/cna"].values
    mean = cna.mean("prompt")
    layer = int(cna.coords["layer"])
    order = np.argsort(-mean.values, kind="stable")[:k]
    return [f"L{layer}N{int(mean.coords['neuron'].values[i])}" for i in order]


def summarise(res: dict[str, Result]) -> dict:
    """One operator's numbers."""
    circ, ncirc = res["circuit"], res["neuron_circuit"]
    neurons = [c for c in ncirc.circuit if "N" in c]
    classified = _classified(res)
    specific = _classified(res, SPECIFIC)
    scan = res["cna/heads"]
    cna = res["cna/cna"].values
    ko = res.get("heuristics_l1/knockout")
    knock = None
    if ko is not None:  # accuracy after the knockout, per heuristic, associated vs unassociated problems
        acc = ko.values.sel(stat="ablated_accuracy")
        gap = acc.sel(target="unassociated") - acc.sel(target="associated")
        worst = str(gap.idxmax("class").item())
        knock = {"n": int(acc.sizes["class"]), "associated": float(acc.sel(target="associated").mean()),
                 "unassociated": float(acc.sel(target="unassociated").mean()), "worst": worst,
                 "worst_associated": float(acc.sel(target="associated", **{"class": worst})),
                 "worst_unassociated": float(acc.sel(target="unassociated", **{"class": worst}))}
    n_neurons = sum(res[f"heuristics_l{layer}/classification"].sizes["neuron"] for layer in (0, 1))
    return {
        "accuracy": res["evaluate"].summary()["accuracy"],
        "n_prompts": circ.meta.options["n_prompts"],
        "circuit": list(circ.circuit), "faithfulness": circ.circuit_faithfulness,
        "heads_needed": sum(1 for c in circ.circuit if "H" in c), "cpr": circ.cpr,
        "neuron_circuit_faithfulness": ncirc.circuit_faithfulness,
        "neuron_circuit_heads": [c for c in ncirc.circuit if "H" in c],
        "neuron_circuit_neurons": {layer: sum(1 for c in neurons if c.startswith(f"L{layer}N")) for layer in (0, 1)},
        "neurons": neurons,
        "classified": len(classified), "of": n_neurons,
        "top_classified": sum(1 for c in neurons if c in classified), "top": len(neurons),
        "top_specific": sum(1 for c in neurons if c in specific),
        "families": _families(res),
        "knockout": knock,
        "cna_head": f"L{int(cna.coords['ablated_layer'])}H{int(cna.coords['ablated_head'])}",
        "cna_head_prob_drop": float(scan.values.max()), "clean_prob": scan.meta.extra["clean_prob"],
        "top_cna": _top_cna(res), "heuristic_neurons": classified,
    }


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else float("nan")


def _chance_jaccard(m: int, n: int, total: int) -> float:
    """The Jaccard overlap two random sets of ``m`` and ``n`` of ``total`` items have on average
    (to first order: the expected intersection over the expected union)."""
    both = m * n / total
    return both / (m + n - both)


def _pairs_table(title: str, sets: dict[str, set]) -> str:
    ops = list(sets)
    lines = [f"| {title} | " + " | ".join(OPERATORS[o] for o in ops) + " |", "|---" * (len(ops) + 1) + "|"]
    for a in ops:
        cells = [f"{jaccard(sets[a], sets[b]):.2f}" if a != b else f"({len(sets[a])})" for b in ops]
        lines.append(f"| {OPERATORS[a]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _shared(summary: dict[str, dict]) -> tuple[list[str], dict[str, list[str]]]:
    """Neuron-circuit neurons in every operator's circuit, and those in one operator's only."""
    sets = {op: set(s["neurons"]) for op, s in summary.items()}
    every = sorted(set.intersection(*sets.values()), key=lambda x: (x[:2], int(x.split("N")[1])))
    only = {op: sorted(sets[op] - set.union(*(sets[o] for o in sets if o != op))) for op in sets}
    return every, only


def report(summary: dict[str, dict]) -> str:
    ops = list(summary)
    rows = [
        ("accuracy (task prompts)", lambda s: f"{s['accuracy']:.3f}"),
        ("circuit (heads + MLPs, target 0.9)", lambda s: ", ".join(s["circuit"])),
        ("faithfulness (NL, mean ablation)", lambda s: f"{s['faithfulness']:.3f}"),
        ("heads needed", lambda s: str(s["heads_needed"])),
        ("neuron circuit: heads, L0 / L1 neurons", lambda s: f"{len(s['neuron_circuit_heads'])}, "
         f"{s['neuron_circuit_neurons'][0]} / {s['neuron_circuit_neurons'][1]} (F {s['neuron_circuit_faithfulness']:.3f})"),
        ("neurons classified (t = 0.6), all", lambda s: f"{s['classified']} of {s['of']} ({s['classified'] / s['of']:.0%})"),
        ("… of the neuron circuit's (top neurons)", lambda s: f"{s['top_classified']} of {s['top']} "
         f"({s['top_classified'] / max(s['top'], 1):.0%})"),
        (f"… by a heuristic holding ≤ {SPECIFIC:.0%} of the grid", lambda s: f"{s['top_specific']} of {s['top']} "
         f"({s['top_specific'] / max(s['top'], 1):.0%})"),
        ("families (classified neurons)", lambda s: ", ".join(f"{k} {v}" for k, v in list(s["families"].items())[:4])),
        ("knockout (MLP1, the 5 commonest heuristics): mean accuracy assoc. / unassoc.",
         lambda s: "—" if not s["knockout"] else f"{s['knockout']['associated']:.2f} / {s['knockout']['unassociated']:.2f}"),
        ("… the knockout that hurts its own problems most", lambda s: "—" if not s["knockout"] else
         f"{s['knockout']['worst']}: {s['knockout']['worst_associated']:.2f} / {s['knockout']['worst_unassociated']:.2f}"),
        ("CNA head (fall of P(answer))", lambda s: f"{s['cna_head']} ({s['cna_head_prob_drop']:.2f} of {s['clean_prob']:.2f})"),
    ]
    out = ["| | " + " | ".join(OPERATORS[o] for o in ops) + " |", "|---" * (len(ops) + 1) + "|"]
    out += [f"| {name} | " + " | ".join(f(summary[o]) for o in ops) + " |" for name, f in rows]
    out.append("")
    out.append(_pairs_table("circuit heads + MLPs", {o: set(s["circuit"]) for o, s in summary.items()}))
    out.append("")
    circuits = {o: set(s["neurons"]) for o, s in summary.items()}
    out.append(_pairs_table("neuron-circuit neurons", circuits))
    total = next(iter(summary.values()))["of"]
    chance = [_chance_jaccard(len(circuits[a]), len(circuits[b]), total) for a in circuits for b in circuits if a < b]
    out.append(f"(two random sets of these sizes out of {total} neurons: Jaccard {min(chance):.2f}–{max(chance):.2f})")
    out.append("")
    out.append(_pairs_table("heuristic neurons (all classified)",
                            {o: set(s["heuristic_neurons"]) for o, s in summary.items()}))
    out.append("")
    out.append(_pairs_table("classified neuron-circuit neurons",
                            {o: set(s["neurons"]) & set(s["heuristic_neurons"]) for o, s in summary.items()}))
    out.append("")
    out.append(_pairs_table(f"top-{TOP_CNA} CNA neurons", {o: set(s["top_cna"]) for o, s in summary.items()}))
    every, only = _shared(summary)
    out.append("")
    out.append(f"Neurons in every operator's neuron circuit ({len(every)}): " + (", ".join(every) or "none"))
    for n in every[:8]:
        best = {OPERATORS[o]: (summary[o]["heuristic_neurons"].get(n) or ["—"])[0] for o in ops}
        out.append(f"- {n}: " + "; ".join(f"{k} {v}" for k, v in best.items()))
    out.append("Operator-specific neuron-circuit neurons: "
               + ", ".join(f"{OPERATORS[o]} {len(v)}" for o, v in only.items()))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="?", default=Path("runs"))
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args()
    summary = {op: summarise(res) for op, res in load_runs(args.runs).items()}
    print(report(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
