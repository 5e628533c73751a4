"""Benchmark: every attribution method against the exact patching sweep, in one process.

For each model (every shipped zoo model, every planted-circuit model, and a randomly
initialised model the size of GPT-2 small), on the pairs the report uses (32 of the
model's own task, ``random`` pairs, seed 0; the planted models' own pairs), it runs
the exact head x position sweep (fast engine) once and each (method, freeze_norm) of
``attribution_patch``, and prints one line per (model, method, freeze_norm)::

    model=<name> method=<m> freeze_norm=<bool> spearman=<x> top10=<y> cost_fwd_eq=<z>

``spearman`` / ``top10``: rank correlation and top-10 overlap with the exact effects
(:func:`arithinterp.methods.attribution.compare_with_exact`); ``cost_fwd_eq``: the
method's wall time over one plain forward pass of the same batch, both the best of
a few repeats, measured side by side. Lines starting with ``#`` add the Pearson
correlation, the magnitude ratio ``‖estimate‖ / ‖exact‖``, the Spearman correlation over the
cells with at least 1% of the largest exact effect (``spearman_major``, ``n_major`` of them), the exact sweep's own cost
and, for the GPT-2-small-sized model, the neuron x position sweep (``model=<name>:neurons``;
its exact sweep is not run, so ``spearman`` and ``top10`` are ``nan`` there; ``--gpt2-heads``
adds its head x position calibration).
Absolute times on a shared machine are noise; read the ratios.

    python benchmarks/attribution.py [--models add-5d,decoy] [--no-gpt2] [--gpt2-heads] [--n 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from arithinterp.methods.attribution import attribution_patch
from arithinterp.methods.attribution_calibration import (
    calibrate_attribution,
    counted_passes,
    forward_time,
)
from arithinterp.methods.metrics import tokenize_pairs
from arithinterp.models import load_model
from arithinterp.planted import PLANTED, planted
from arithinterp.tasks import TaskSpec, generate, make_pairs, tokenize
from arithinterp.zoo.registry import list_zoo, zoo_path

ZOO = tuple(entry.name for entry in list_zoo())  # every shipped model


def zoo_inputs(name: str, n: int):
    model = load_model(f"zoo:{name}")
    prompts = generate(model=model, n=n, seed=0)
    pairs = make_pairs(prompts, "random", seed=0, on_impossible="drop")
    answer = "single" if tokenize(pairs.clean, model.tokenizer, answer="multi").answer_len == 1 else "multi"
    return model, pairs, answer


def gpt2_small(root: Path):
    """A random GPT-2-small-sized model (12 layers, d_model 768, 12 heads) on add-5d's tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(zoo_path("add-5d"))
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=768, n_layer=12, n_head=12))
    hf.save_pretrained(root, safe_serialization=True)
    tokenizer.save_pretrained(root)
    model = load_model(str(root))
    prompts = generate(TaskSpec(operation="add", digits=5, format="fixed", n=8, seed=0))
    return model, make_pairs(prompts, "random", seed=0), "multi"


def report(name: str, frame, exact_cost: float | None = None) -> None:
    for row in frame.itertuples(index=False):
        print(f"model={name} method={row.method} freeze_norm={row.freeze_norm} spearman={row.spearman:.3f} "
              f"top10={row.top10:.2f} cost_fwd_eq={row.cost_fwd_eq:.1f}")
        print(f"#   pearson={row.pearson:.3f} magnitude_ratio={row.magnitude_ratio:.3f} "
              f"passes_fwd_eq={row.passes_fwd_eq:.0f} spearman_major={row.spearman_major:.3f} "
              f"n_major={row.n_major}")
    if exact_cost is not None:
        print(f"# model={name} exact head x position sweep (fast engine): cost_fwd_eq={exact_cost:.1f}")


def neuron_costs(name: str, model, pairs, answer: str, repeats: int) -> None:
    batch = tokenize_pairs(pairs, model.tokenizer, answer=answer)
    cells = model.shape.n_layers * model.shape.d_mlp * batch.seq_len
    print(f"# model={name}:neurons {cells} neuron x position cells")
    for method, freeze in (("atp", False), ("atp", True), ("relp", True)):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            with counted_passes() as passes:
                attribution_patch(model, batch, kind="mlp_post", method=method, freeze_norm=freeze, answer=answer,
                                  batch_size=len(batch.clean), n_boot=1, progress=False)
            best = min(best, time.perf_counter() - start)
        forward = forward_time(model, batch)
        print(f"model={name}:neurons method={method} freeze_norm={freeze} spearman=nan top10=nan "
              f"cost_fwd_eq={best / forward:.1f}")
        print(f"#   passes_fwd_eq={passes[0]:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO + PLANTED),
                        help="comma-separated zoo and planted model names")
    parser.add_argument("--no-gpt2", action="store_true", help="skip the GPT-2-small-sized model")
    parser.add_argument("--gpt2-heads", action="store_true",
                        help="also calibrate the GPT-2-small-sized model's head x position sweep (its exact "
                             "sweep takes minutes)")
    parser.add_argument("--n", type=int, default=32, help="prompts per zoo model")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    runs = []
    for name in [m for m in args.models.split(",") if m]:
        if name in ZOO:
            runs.append((name, lambda name=name: zoo_inputs(name, args.n)))
        elif name in PLANTED:
            runs.append((f"planted:{name}", lambda name=name: _planted(name)))
        else:
            raise SystemExit(f"unknown model {name!r}; zoo: {', '.join(ZOO)}; planted: {', '.join(PLANTED)}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_gpt2:
            runs.append(("gpt2-small-random", lambda: gpt2_small(Path(tmp) / "gpt2-small")))
        for name, make in runs:
            model, pairs, answer = make()
            if name == "gpt2-small-random":
                neuron_costs(name, model, pairs, answer, args.repeats)
                if not args.gpt2_heads:
                    continue
            frame = calibrate_attribution(model, pairs, answer=answer, repeats=args.repeats)
            report(name, frame, frame.attrs["exact_seconds"] / frame.attrs["forward_seconds"])


def _planted(name: str):
    p = planted(name)
    return p.model, p.pairs, p.spec.answer


if __name__ == "__main__":
    main()
