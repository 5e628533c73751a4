"""Which ablation should circuit discovery use? Every kind on the planted models and two zoo models.

For each model and ``ablation`` (mean, zero, resample, counterfactual, optimal) it runs
``discover_circuit`` (exact patching ranks, greedy growth to the model's target) and records the
circuit, whether it equals the planted truth (planted models; a backup head counts once), its
faithfulness, the MIB CPR / CMD of the component ranking under that ablation, and the time.
Planted models use their own metric and target (logit_diff, 0.99); zoo models NL and 0.9.
Run: ``python benchmarks/circuit_ablations.py`` (a few minutes on one CPU thread); it prints the
markdown table recorded in docs/methods/circuits.md.
"""

from __future__ import annotations

import time

import torch

from arithinterp.methods import discover_circuit
from arithinterp.models import load_model
from arithinterp.planted import planted
from arithinterp.tasks import TaskSpec, generate, make_pairs

KINDS = ("mean", "zero", "resample", "counterfactual", "optimal")
PLANTED = ("and", "decoy", "backup", "negative", "compose")


def _expected(p) -> set[str]:
    """The smallest faithful circuit of a planted model: a backup pair counts once (its first head)."""
    backups = sorted(k for k, r in p.roles.items() if r == "backup")
    return set(p.truth) - set(backups[1:])


def _row(model_name: str, kind: str, res, seconds: float, expected: set[str] | None) -> str:
    ok = "" if expected is None else ("yes" if set(res.circuit) == expected else "no")
    f = "n/a" if res.circuit_faithfulness is None else f"{res.circuit_faithfulness:.3f}"
    cpr = "n/a" if res.cpr is None else f"{res.cpr:.3f}"
    cmd = "n/a" if res.cmd is None else f"{res.cmd:.3f}"
    return (f"| {model_name} | {kind} | {', '.join(res.circuit)} | {ok} | {f} | {res.reached} | {res.trivial} "
            f"| {cpr} | {cmd} | {seconds:.1f} |")


def main() -> None:
    torch.set_num_threads(1)
    print("| model | ablation | circuit | = truth | F | reached | trivial | CPR | CMD | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in PLANTED:
        p = planted(name)
        for kind in KINDS:
            start = time.perf_counter()
            res = p.discover(grow="greedy", ablation=kind)
            print(_row(f"planted {name}", kind, res, time.perf_counter() - start, _expected(p)), flush=True)
    zoo = {
        "add-2d-tok": (TaskSpec(operation="add", operand_range=(0, 99), format="plain", n=100, seed=7), "single"),
        "add-5d": (TaskSpec(operation="add", digits=5, format="fixed", n=64, seed=1), "multi"),
    }
    for name, (spec, answer) in zoo.items():
        model = load_model(f"zoo:{name}")
        prompts = generate(spec)
        pairs = make_pairs(prompts, "random", seed=spec.seed)
        for kind in KINDS:
            start = time.perf_counter()
            res = discover_circuit(model, pairs, prompts, answer=answer, grow="greedy", ablation=kind, progress=False)
            print(_row(f"zoo {name}", kind, res, time.perf_counter() - start, None), flush=True)


if __name__ == "__main__":
    main()
