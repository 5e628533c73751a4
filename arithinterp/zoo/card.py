"""Model cards: ``card.json`` (machine-readable) and ``README.md`` (for people).

The README is a pure function of the card, so it can be regenerated after the
fact with :func:`write_readme` without retraining.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

import torch
import transformers

__all__ = ["build_card", "package_version", "read_card", "render_readme", "write_readme"]

_FORMATS = {
    "add": (
        "Prompt `{{a}}+{{b}}=` with both operands zero-padded to {n} digits, one token per "
        "character (digit-level tokenizer). The answer is {n1} digits, most significant "
        "first, zero-padded: `12345+67890=` -> `080235`."
    ),
    "sub": (
        "Prompt `{{a}}-{{b}}=` with both operands zero-padded to {n} digits, one token per "
        "character (digit-level tokenizer). The answer is a sign token (`+` or `-`) then "
        "{n} digits of |a - b|, most significant first: `00123-45678=` -> `-45555`, "
        "`45678-00123=` -> `+45555`."
    ),
    "addsub": (
        "Prompt `{{a}}+{{b}}=` or `{{a}}-{{b}}=`, operands zero-padded to {n} digits, one "
        "token per character; the operator token chooses the operation. The answer is "
        "{n1} tokens either way: the sum's {n1} digits MSD first (`12345+67890=` -> "
        "`080235`), or a sign then {n} digits of the difference (`00123-45678=` -> `-45555`)."
    ),
    "mul": (
        "Prompt `{{a}}*{{b}}=` with both operands zero-padded to {n} digits, one token per "
        "character. The answer is {n2} digits, **least significant first** (reversed), "
        "zero-padded: `123*456=` (56088) -> `880650`."
    ),
    "mul_msd": (
        "Prompt `{{a}}*{{b}}=` with both operands zero-padded to {n} digits, one token per "
        "character. The answer is {n2} digits, **most significant first**, zero-padded: "
        "`123*456=` -> `056088`."
    ),
    "ops_tok": (
        "Prompt `37+85=`, `37-8=`, `31*29=` or `97/8=`: number-level tokenizer where every "
        "number 0..{rmax} is one token: `[37, +, 85, =]`. The answer is one number token. "
        "Operands are below {omax}; only problems whose result is in 0..{rmax} exist "
        "(subtraction with a >= b, products up to {rmax}, floor division by b >= 1)."
    ),
    "modadd": (
        'Prompt text `"{{a}} {{b}} ="`, number-level tokenizer: tokens `[a, b, =]` with ids '
        "a, b (0..{p_1}) and `=` = {p}. The answer is the single token `str((a+b) % {p})`, "
        "read at the `=` position over the first {p} logits."
    ),
    "add_tok": (
        "Prompt `37+85=`, number-level tokenizer where every number 0..{nmax} is one token: "
        "`[37, +, 85, =]`. The answer is one number token (`122`)."
    ),
}


def package_version() -> str:
    try:
        return importlib.metadata.version("arithinterp")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def build_card(
    recipe,
    fmt,
    *,
    steps_done: int,
    wall_time_s: float,
    cpu_time_s: float | None = None,
    metrics: dict[str, Any],
    stopped_early: bool,
    checkpoints: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    card: dict[str, Any] = {
        "name": recipe.name,
        "task": recipe.task.kind,
        "description": recipe.description,
        "recipe": recipe.model_dump(mode="json"),
        "seed": recipe.seed,
        "steps": steps_done,
        "stopped_early": stopped_early,
        "wall_time_s": round(wall_time_s, 1),
        # CPU seconds of the training process: what the run costs, whatever else the shared
        # machine was doing (with 1 thread, about the wall time on an idle machine)
        "cpu_time_s": None if cpu_time_s is None else round(cpu_time_s, 1),
        "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} thread(s))",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "arithinterp_version": package_version(),
        "format": {
            "prompt_len": fmt.prompt_len,
            "answer_len": fmt.answer_len,
            "example_prompt": fmt.prompt_text(*_example(fmt)),
        },
        "metrics": metrics,
        "headline": metrics["headline"],
    }
    card["format"]["example_answer"] = fmt.answer_text(*_example(fmt))
    if len(fmt.ops) > 1:
        card["format"]["examples"] = {
            name: [fmt.prompt_text(*_example(fmt, op)), fmt.answer_text(*_example(fmt, op))]
            for op, name in enumerate(fmt.ops)
        }
    if checkpoints:
        card["checkpoints"] = checkpoints
    return card


def _example(fmt, op: int = 0) -> tuple[int, int, int]:
    """The operands every card shows (``12345``/``67890`` cut to the width, or 37 and 8)."""
    if fmt.digit_level:
        return 12345 % 10**fmt.n_digits, 67890 % 10**fmt.n_digits, op
    if fmt.kind == "ops_tok":
        return 37, 8, op
    return 37, 85, op


def _format_text(card: dict[str, Any]) -> str:
    task = card["recipe"]["task"]
    n = task.get("n_digits") or 0
    p = task.get("p") or 0
    key = card["task"]
    if key == "mul" and task.get("answer_order") == "msd":
        key = "mul_msd"
    return _FORMATS[key].format(
        n=n, n1=n + 1, n2=2 * n, p=p, p_1=p - 1, nmax=2 * (task.get("max_operand") or 0) - 2,
        omax=task.get("max_operand"), rmax=task.get("max_result"),
    )


def read_card(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / "card.json").read_text())


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.3f}%"


def render_readme(card: dict[str, Any]) -> str:
    """The human-readable model card for a ``card.json`` dict."""
    lines = (
        _header_section(card)
        + _accuracy_section(card)
        + _checkpoint_section(card)
        + _notes_section(card)
        + _training_section(card)
        + _usage_section(card)
    )
    return "\n".join(lines)


def _header_section(card: dict[str, Any]) -> list[str]:
    """Title, description, prompt format and architecture."""
    r = card["recipe"]
    arch = r["architecture"]
    return [
        f"# {card['name']}",
        "",
        card.get("description") or "",
        "",
        "## Format",
        "",
        _format_text(card),
        "",
        "## Architecture",
        "",
        f"Hugging Face `GPT2LMHeadModel`: {arch['n_layer']} layer(s), d_model {arch['n_embd']}, "
        f"{arch['n_head']} heads, d_mlp {arch['n_inner'] or 4 * arch['n_embd']}, "
        f"activation {arch['activation']}, {'tied' if arch['tie'] else 'untied'} embeddings, "
        "learned positions, all dropouts 0, LayerNorm (GPT-2 always has it). Weights in "
        "`model.safetensors` (float32); load with `use_safetensors=True`.",
        "",
    ]


def _accuracy_section(card: dict[str, Any]) -> list[str]:
    """The headline metric, then the tables the card's metrics have."""
    m = card["metrics"]
    lines = [
        "## Accuracy",
        "",
        f"Headline: **{card['headline']['metric']} = {_pct(card['headline']['value'])}** "
        f"on {card['headline']['n']:,} {card['headline']['sample']}.",
        "",
    ]
    if "uniform" in m:
        u = m["uniform"]
        lines += [
            "Exact match is measured teacher-forced, which equals greedy decoding for exact "
            "match; per-digit accuracy is teacher-forced.",
            "",
            f"| answer position ({u['answer_order']}) | accuracy |",
            "|---|---|",
        ]
        lines += [f"| {i} | {_pct(x)} |" for i, x in enumerate(u["per_token"])]
        lines.append("")
    if "by_operator" in m and "uniform" in m:
        lines += ["| operator | n (uniform sample) | exact match |", "|---|---|---|"]
        lines += [f"| {op} | {v['n']:,} | {_pct(v['exact_match'])} |"
                  for op, v in m["by_operator"].items()]
        lines.append("")
    if "by_class" in m:
        lines += _class_table(m)
    for key in ("carry_classes", "borrow_classes"):
        if key in m:
            lines += _class_table(m[key])
    if "train" in m:
        lines += [
            "| split | pairs | accuracy | loss |",
            "|---|---|---|---|",
            f"| train | {m['train']['n']:,} | {_pct(m['train']['accuracy'])} | {m['train']['loss']:.3g} |",
            f"| test | {m['test']['n']:,} | {_pct(m['test']['accuracy'])} | {m['test']['loss']:.3g} |",
            "",
        ]
    if "by_operator" in m and "train" in m:
        lines += ["| operator | train pairs | train accuracy | test pairs | test accuracy |",
                  "|---|---|---|---|---|"]
        for op, tr in m["by_operator"]["train"].items():
            te = m["by_operator"]["test"][op]
            lines.append(f"| {op} | {tr['n']:,} | {_pct(tr['accuracy'])} | {te['n']:,} | "
                         f"{_pct(te['accuracy'])} |")
        lines.append("")
    return lines


def _class_table(m: dict[str, Any]) -> list[str]:
    """Exact match per carry class (S0..S5) or borrow class (B0..B5)."""
    borrow = next(iter(m["by_class"])).startswith("B")
    what = (
        "borrow-cascade class (B0 no borrow, B1 borrows, B2..B5 a borrow through 1..4 "
        "zero-difference columns)" if borrow
        else "complexity class (Quirke & Barez)"
    )
    lines = [
        f"Per {what}: balanced constructed samples, and the classes as they occur in the "
        "uniform sample.",
        "",
        "| class | balanced n | balanced exact match | uniform n | uniform exact match |",
        "|---|---|---|---|---|",
    ]
    for c, v in m["by_class"].items():
        u = m["uniform_by_class"][c]
        lines.append(
            f"| {c} | {v['n']:,} | {_pct(v['exact_match'])} | {u['n']:,} | {_pct(u['exact_match'])} |"
        )
    lines.append("")
    return lines


def _checkpoint_section(card: dict[str, Any]) -> list[str]:
    """The table of shipped training checkpoints (none: no section)."""
    if not card.get("checkpoints"):
        return []
    lines = [
        "## Checkpoints across training",
        "",
        "Under `checkpoints/step-<N>/`, each a complete HF directory (load with "
        "`arithinterp.zoo.load_checkpoint_dir(name, step)` or any HF loader).",
        "",
        "| step | phase | train loss | train acc | test loss | test acc |",
        "|---|---|---|---|---|---|",
    ]
    for c in card["checkpoints"]:
        lines.append(
            f"| {c['step']} | {c['phase']} | {c['train_loss']:.3g} | {_pct(c['train_accuracy'])} "
            f"| {c['test_loss']:.3g} | {_pct(c['test_accuracy'])} |"
        )
    lines.append("")
    return lines


def _notes_section(card: dict[str, Any]) -> list[str]:
    """The recipe's and the card's notes and the failures read off the metrics (none: no section)."""
    notes = list(card["recipe"].get("notes") or []) + list(card.get("notes") or []) + _failures(card)
    if not notes:
        return []
    return ["## Deviations and known failures", ""] + [f"- {x}" for x in notes] + [""]


def _training_section(card: dict[str, Any]) -> list[str]:
    """Optimiser, schedule, steps, seed, wall time and versions."""
    r = card["recipe"]
    opt, sch = r["optimizer"], r["schedule"]
    return [
        "## Training",
        "",
        f"AdamW lr {opt['lr']}, weight decay {opt['weight_decay']}, betas {tuple(opt['betas'])}; "
        f"schedule {sch['kind']} (warm-up {sch['warmup_steps']} steps); "
        f"batch {r['batch_size'] or 'full'}; {card['steps']:,} steps"
        f"{' (stopped early)' if card.get('stopped_early') else ''} of {r['steps']:,}; "
        f"seed {card['seed']}; {card['wall_time_s']:.0f} s on {card['device']}"
        f"{_cpu_note(card)}; "
        f"torch {card['torch_version']}, transformers {card['transformers_version']}, "
        f"arithinterp {card['arithinterp_version']}.",
        "",
    ]


def _cpu_note(card: dict[str, Any]) -> str:
    cpu = card.get("cpu_time_s")
    if cpu is None:
        return ""
    return f" ({cpu:.0f} s of CPU time: the wall time includes waiting for a busy machine)"


def _usage_section(card: dict[str, Any]) -> list[str]:
    """How to load the model and how to retrain it."""
    return [
        "## Load",
        "",
        "```python",
        "from transformers import AutoTokenizer, GPT2LMHeadModel",
        "from arithinterp.zoo import zoo_path",
        "",
        f'path = zoo_path("{card["name"]}")',
        "model = GPT2LMHeadModel.from_pretrained(path, use_safetensors=True)",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "# TransformerLens 4.x: TransformerBridge.boot_transformers(str(path))",
        "# nnsight: LanguageModel(str(path))",
        "```",
        "",
        "## Reproduce",
        "",
        "```",
        f"arithinterp train {card['name']} --seed {card['seed']}",
        f"# or: python -m arithinterp.zoo.train {card['name']} --out DIR",
        "```",
        "",
        "The full recipe is in `card.json` (`recipe`) and "
        f"`arithinterp/zoo/recipes/{card['name']}.yaml`.",
        "",
    ]


def _failures(card: dict[str, Any]) -> list[str]:
    """Plain statements of where the model falls short, read off its metrics."""
    m, out = card["metrics"], []
    tables = [m] + [m[k] for k in ("carry_classes", "borrow_classes") if k in m]
    for t in tables:
        if "by_class" not in t:
            continue
        weak = [
            f"{c} {_pct(v['exact_match'])}"
            for c, v in t["by_class"].items()
            if v["exact_match"] < 0.99
        ]
        if weak:
            kind = "borrow" if next(iter(t["by_class"])).startswith("B") else "complexity"
            out.append(f"Below 99% exact match on {kind} classes: " + ", ".join(weak) + ".")
    if "by_operator" in m and "test" in m:
        weak = [f"{op} {_pct(v['accuracy'])}" for op, v in m["by_operator"]["test"].items()
                if v["accuracy"] < 0.95]
        if weak:
            out.append("Below 95% on held-out problems for operators: " + ", ".join(weak) + ".")
    if "uniform" in m:
        per = m["uniform"]["per_token"]
        weak = [f"{i} ({_pct(x)})" for i, x in enumerate(per) if x < 0.99]
        if weak:
            order = m["uniform"]["answer_order"]
            out.append(f"Answer positions ({order}) below 99% accuracy: " + ", ".join(weak) + ".")
    if "test" in m and m["test"]["accuracy"] < 0.99:
        out.append(
            f"Does not generalise fully: train {_pct(m['train']['accuracy'])}, "
            f"held-out {_pct(m['test']['accuracy'])}."
        )
    return out


def write_readme(model_dir: Path) -> Path:
    """(Re)write ``README.md`` of a model directory from its ``card.json``."""
    path = Path(model_dir) / "README.md"
    path.write_text(render_readme(read_card(model_dir)))
    return path
