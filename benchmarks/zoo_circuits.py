"""Circuits found on the zoo models (issue #6): add-5d per answer digit, and add-2d-tok.

For add-5d each answer digit gets its own circuit: ``random`` pairs (both operands
change), and both the ranking (exact patching, logit difference) and the mean-ablation
faithfulness (NL) read only that answer token (``discover_circuit(answer_index=i)``).
add-2d-tok (one answer token) uses ``random`` pairs as well. Heads and whole MLPs are
the components; the circuit is the smallest top-k prefix reaching faithfulness 0.9.
Run: ``python benchmarks/zoo_circuits.py`` (a few minutes on a 2-core CPU); it prints
the markdown table recorded in docs/report.md.
"""

from __future__ import annotations

import time

import torch

from arithinterp.methods import discover_circuit
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, make_pairs


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    model = load_model("zoo:add-5d")
    prompts = generate(TaskSpec(operation="add", digits=5, format="fixed", n=64, seed=1))
    # Answer tokens are written most significant first: token i is the digit of place 10^(5-i).
    for index in range(6):
        place = 5 - index
        pairs = make_pairs(prompts, "random", seed=1)
        start = time.perf_counter()
        res = discover_circuit(model, pairs, prompts, answer="multi", answer_index=index, progress=False)
        rows.append(("add-5d", f"answer token {index} (10^{place})", "random", res, time.perf_counter() - start))
    model = load_model("zoo:add-2d-tok")
    prompts = generate(TaskSpec(operation="add", operand_range=(0, 99), format="plain", n=100, seed=7))
    pairs = make_pairs(prompts, "random", seed=7)
    start = time.perf_counter()
    res = discover_circuit(model, pairs, prompts, answer="single", progress=False)
    rows.append(("add-2d-tok", "the answer token", "random", res, time.perf_counter() - start))
    print("| model | answer | pairs | circuit (growth order) | size | faithfulness (NL) | "
          "full | circuit ablated | all ablated | time (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, what, kind, res, secs in rows:
        print(f"| {name} | {what} | {kind} | {', '.join(res.circuit)} | {len(res.circuit)} | "
              f"{res.circuit_faithfulness:.3f} | {res.full_score:.3f} | {res.circuit_ablated_score:.3f} | "
              f"{res.empty_score:.3f} | {secs:.1f} |")


if __name__ == "__main__":
    main()
