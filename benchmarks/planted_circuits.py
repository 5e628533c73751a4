"""The planted-circuit benchmark: grade every attribution and discovery method against the truth.

Builds the planted models (``arithinterp.planted``), scores each with exact activation
patching, attribution patching (AtP; with frozen norms, AtP*, RelP, IG on activations), edge
attribution (EAP), causal mediation, DLA and ``discover_circuit`` (top-k and greedy, resample
ablation), and prints the grade table
(AUROC, MIB's CPR and CMD, faithfulness at the truth's size, exact circuit) as markdown,
the table recorded in ``docs/methods/planted-benchmark.md``.

    python benchmarks/planted_circuits.py                      # the table (about 2 minutes)
    python benchmarks/planted_circuits.py --check              # fail if a grade dropped
    python benchmarks/planted_circuits.py --record             # write the recorded grades
    python benchmarks/planted_circuits.py --models and decoy --backend nnsight
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from arithinterp.planted import PLANTED
from arithinterp.planted.grade import (
    GRADED_METHODS,
    grade,
    grade_records,
    markdown_table,
    regressions,
)
from arithinterp.results.io import atomic_write_json

RECORDED = Path(__file__).resolve().parents[1] / "tests" / "planted" / "recorded_grades.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PLANTED), choices=PLANTED)
    parser.add_argument("--methods", nargs="+", default=list(GRADED_METHODS), choices=GRADED_METHODS)
    parser.add_argument("--backend", default="transformer_lens", choices=("transformer_lens", "nnsight"))
    parser.add_argument("--record", action="store_true", help=f"write the grades to {RECORDED}")
    parser.add_argument("--check", action="store_true", help="exit 1 if a grade is below the recorded one")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    table = grade(args.models, args.methods, backend=args.backend)
    print(markdown_table(table))
    print(f"\n{len(table)} grades in {time.perf_counter() - start:.0f} s ({args.backend})")
    if args.record:  # merged into what is recorded, so a subset run updates only its rows
        recorded = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}
        for model, by_method in grade_records(table).items():
            recorded.setdefault(model, {}).update(by_method)
        atomic_write_json(RECORDED, recorded)
        print(f"recorded in {RECORDED}")
    if args.check:
        dropped = regressions(table, json.loads(RECORDED.read_text()))
        for line in dropped:
            print("DROPPED:", line)
        return 1 if dropped else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
