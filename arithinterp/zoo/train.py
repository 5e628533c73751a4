"""Train a zoo model from its recipe: ``train("add-5d", out_dir)``.

Plain torch over the HF GPT-2 model, deterministic given the seed on CPU.
Progress checkpoints go to ``out_dir/_train_state`` (safetensors + JSON, no
pickle) and a later call resumes from them. When training ends, ``out_dir``
is atomically replaced by a complete HF directory (config.json,
model.safetensors, tokenizer files, card.json, README.md, history.json).

Command line: ``python -m arithinterp.zoo.train NAME [--out DIR] [--steps N]
[--seed S] [--threads T] [--no-resume] [--into-package]``; by default it writes
``./<recipe name>`` and never a shipped model (:mod:`arithinterp.zoo.destination`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from arithinterp.errors import ArithInterpError, ConfigError
from arithinterp.progress_bars import hf_progress, tqdm
from arithinterp.zoo.card import build_card, render_readme
from arithinterp.zoo.data import (
    TaskFormat,
    running_sums,
    sample_addition_operands,
    sample_subtraction_operands,
    sample_uniform_operands,
)
from arithinterp.zoo.evaluate import (
    answer_loss,
    final_metrics,
    pair_sequences,
    score,
    task_pairs,
    uniform_problems,
)
from arithinterp.zoo.modeling import build_model, build_tokenizer_for, lean_last_logits
from arithinterp.zoo.recipe import Recipe, load_recipe
from arithinterp.zoo.state import STATE_DIRNAME, load_state, replace_dir, save_state

__all__ = ["lr_factor", "train", "training_history"]

SNAPSHOT_DIRNAME = "_snapshots"
_MARKERS = ("config.json", "card.json", STATE_DIRNAME, SNAPSHOT_DIRNAME)


def lr_factor(step: int, recipe: Recipe) -> float:
    """Learning-rate multiplier for update number ``step`` (0-based)."""
    sch = recipe.schedule
    w = sch.warmup_steps
    if step < w:
        return sch.warmup_start + (1.0 - sch.warmup_start) * (step + 1) / w
    if sch.kind == "warmup_constant":
        return 1.0
    progress = (step - w) / max(recipe.steps - w, 1)
    return sch.final_fraction + (1 - sch.final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


class _Batches:
    """Training batches as (input_ids, answers, aux targets or None), drawn from ``rng``."""

    def __init__(self, recipe: Recipe, fmt: TaskFormat, rng: np.random.Generator):
        self.recipe, self.fmt, self.rng = recipe, fmt, rng
        self.train_seqs = None
        self.train_by_op: list[torch.Tensor] = []
        if fmt.kind in ("modadd", "add_tok", "ops_tok"):
            train, _ = task_pairs(fmt, recipe.task.train_fraction, recipe.seed)
            self.train_seqs = torch.from_numpy(pair_sequences(fmt, train))
            if fmt.kind == "ops_tok":  # each operator equally often, whatever its table's size
                self.train_by_op = [self.train_seqs[torch.from_numpy(train[:, 2] == op)]
                                    for op in range(len(fmt.ops))]

    def _enrich(self) -> float:
        enr = self.recipe.enrichment
        if enr is not None and self.rng.random() < enr.batch_fraction:
            return enr.pair_fraction
        return 0.0

    def _fresh(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fmt, size, n = self.fmt, self.recipe.batch_size, self.fmt.n_digits
        if fmt.kind == "mul":
            a, b = sample_uniform_operands(self.rng, size, n)
            return a, b, np.zeros(size, np.int64)
        frac = self._enrich()
        if fmt.kind == "add":
            a, b = sample_addition_operands(self.rng, size, n, enrich_pair_fraction=frac)
            return a, b, np.zeros(size, np.int64)
        sa, sb = sample_subtraction_operands(self.rng, size, n, enrich_pair_fraction=frac)
        if fmt.kind == "sub":
            return sa, sb, np.zeros(size, np.int64)
        aa, ab = sample_addition_operands(self.rng, size, n, enrich_pair_fraction=frac)
        op = self.rng.integers(0, 2, size)
        return np.where(op == 1, sa, aa), np.where(op == 1, sb, ab), op

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        fmt, r = self.fmt, self.recipe
        aux = None
        if self.train_seqs is not None:
            seqs = self.train_seqs
            if r.batch_size is not None and self.train_by_op:
                op = self.rng.integers(0, len(self.train_by_op), r.batch_size)
                parts = [t[torch.from_numpy(self.rng.integers(0, len(t), int((op == i).sum())))]
                         for i, t in enumerate(self.train_by_op)]
                seqs = torch.cat(parts)
            elif r.batch_size is not None:
                idx = self.rng.integers(0, len(seqs), r.batch_size)
                seqs = seqs[torch.from_numpy(idx)]
        else:
            a, b, op = self._fresh()
            seqs = torch.from_numpy(fmt.sequences(a, b, op if len(fmt.ops) > 1 else None))
            if r.aux_loss is not None:
                sums = running_sums(a, b, fmt.n_digits)  # column k: answer digit k, LSD first
                aux = torch.from_numpy(sums[:, ::-1].copy() if fmt.msd_first else sums).double()
        return seqs[:, :-1], seqs[:, fmt.prompt_len :], aux


def _answer_logits(model, ids: torch.Tensor, fmt: TaskFormat, lean: bool) -> torch.Tensor:
    if lean:
        return lean_last_logits(model, ids)[:, None]
    return model(input_ids=ids).logits[:, fmt.answer_positions]


class _AuxHead(torch.nn.Module):
    """Bai et al.'s auxiliary regression head: reads one attention block's output at
    the answer positions (captured by a forward hook) and predicts ``c^_k / scale``."""

    def __init__(self, model, recipe: Recipe, fmt: TaskFormat):
        super().__init__()
        self.spec, self.fmt = recipe.aux_loss, fmt
        self.head = torch.nn.Linear(model.config.n_embd, 1, bias=False)
        self._captured: torch.Tensor | None = None
        block = model.transformer.h[self.spec.layer]
        self._handle = block.attn.register_forward_hook(self._capture)

    def _capture(self, module, args, output) -> None:
        self._captured = output[0] if isinstance(output, tuple) else output

    def loss(self, targets: torch.Tensor) -> torch.Tensor:
        out = self._captured[:, self.fmt.answer_positions]
        pred = self.head(out).squeeze(-1).double()
        return torch.nn.functional.mse_loss(pred, targets / self.spec.scale)

    def remove(self) -> None:
        self._handle.remove()


def _optimizer(model, recipe: Recipe) -> torch.optim.AdamW:
    opt = recipe.optimizer
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_norm = ".ln_" in name or name.startswith("ln_") or ".ln_f." in name
        (no_decay if is_norm and not opt.decay_norms else decay).append(p)
    groups = [{"params": decay, "weight_decay": opt.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps)


@torch.no_grad()
def _periodic_eval(model, recipe: Recipe, fmt: TaskFormat, batches: _Batches, step: int) -> dict:
    model.eval()
    row: dict[str, Any] = {"step": step}
    if batches.train_seqs is not None:
        _, test = task_pairs(fmt, recipe.task.train_fraction, recipe.seed)
        splits = {
            "train": batches.train_seqs,
            "test": torch.from_numpy(pair_sequences(fmt, test)),
        }
        for split, seqs in splits.items():
            logits = _answer_logits(model, seqs[:, :-1], fmt, recipe.lean_forward)
            answers = seqs[:, fmt.prompt_len :]
            vocab = logits[..., : fmt.p] if fmt.kind == "modadd" else logits
            row[f"{split}_loss"] = answer_loss(logits, answers, fmt, float64=True).item()
            row[f"{split}_accuracy"] = (vocab.argmax(-1) == answers).all(-1).double().mean().item()
    else:
        rng = np.random.default_rng([recipe.seed, step, 104729])
        problems = uniform_problems(rng, fmt, recipe.eval.n_periodic)
        res = score(model, fmt, pair_sequences(fmt, problems))
        row["test_loss"], row["test_accuracy"] = res["loss"], res["exact_match"]
        row["per_token"] = [round(x, 4) for x in res["per_token"]]
    model.train()
    return row


def _evaluate_step(model, recipe: Recipe, fmt: TaskFormat, batches: _Batches, info: dict,
                   batch_loss: float, snap: bool, out_dir: Path) -> dict:
    """The periodic evaluation at ``info["step"]``: logged, kept in the history, and (``snap``)
    the weights saved as a snapshot for the phase checkpoints."""
    step = info["step"]
    row = _periodic_eval(model, recipe, fmt, batches, step)
    row["batch_loss"] = batch_loss
    info["history"].append(row)
    tqdm.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}))
    if snap:
        path = out_dir / SNAPSHOT_DIRNAME / f"step-{step}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().clone() for n, p in model.named_parameters()}, str(path))
        info["snapshots"].append({k: v for k, v in row.items() if k != "per_token"})
    return row


def _check_out_dir(out_dir: Path) -> None:
    occupied = out_dir.exists() and any(out_dir.iterdir())
    if occupied and not any((out_dir / m).exists() for m in _MARKERS):
        raise ConfigError(
            f"{out_dir} exists and is not a zoo model or training directory; it would be "
            "replaced when training ends. Choose an empty or new directory."
        )


def _check_not_shipped(out_dir: Path, into_package: bool) -> None:
    from arithinterp.zoo.registry import ZOO_DIR

    if not into_package and out_dir.resolve().is_relative_to(ZOO_DIR.resolve()):
        raise ConfigError(
            f"{out_dir} is inside the package zoo ({ZOO_DIR}), which holds the shipped models; "
            "pass into_package=True (--into-package) to replace a shipped model, or train "
            "into a directory outside the package"
        )


def _phase_checkpoints(snapshots: list[dict]) -> list[dict]:
    """Pick memorised / circuit formation / cleanup snapshots from the run."""
    if not snapshots:
        return []
    picked: dict[str, dict] = {}
    memo = next((s for s in snapshots if s["train_accuracy"] >= 1.0), None)
    grok = next((s for s in snapshots if s["test_accuracy"] >= 0.99), None)
    if memo is not None:
        picked["memorised"] = memo
    if grok is not None:
        picked["cleanup"] = grok
    if memo is not None and grok is not None and grok["step"] > memo["step"]:
        mid = (memo["step"] + grok["step"]) / 2
        between = [s for s in snapshots if memo["step"] < s["step"] < grok["step"]]
        if between:
            picked["circuit formation"] = min(between, key=lambda s: abs(s["step"] - mid))
    order = ["memorised", "circuit formation", "cleanup"]
    chosen = [dict(picked[k], phase=k) for k in order if k in picked]
    if len(chosen) < 3:  # a run too short for every phase: fill with evenly spaced snapshots
        taken = {c["step"] for c in chosen}
        rest = [s for s in snapshots if s["step"] not in taken]
        want = min(3 - len(chosen), len(rest))
        for i in range(want):
            s = rest[round(i * (len(rest) - 1) / max(want - 1, 1))] if want > 1 else rest[0]
            if s["step"] not in taken:
                chosen.append(dict(s, phase="training"))
                taken.add(s["step"])
        chosen.sort(key=lambda c: c["step"])
    return chosen


def _write_checkpoint_dir(model, tok, path: Path, weights: dict, metrics: dict) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name])
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "metrics.json").write_text(json.dumps(metrics, indent=2))


def _finish(model, tok, recipe, fmt, out_dir, info, stopped_early) -> Path:
    metrics = final_metrics(model, recipe, fmt, seed=recipe.seed)
    tmp = out_dir.with_name(f".{out_dir.name}.final")
    if tmp.exists():
        shutil.rmtree(tmp)
    final_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    checkpoints = []
    snaps = _phase_checkpoints(info["snapshots"])
    for s in snaps:
        w = load_file(str(out_dir / SNAPSHOT_DIRNAME / f"step-{s['step']}.safetensors"))
        _write_checkpoint_dir(model, tok, tmp / "checkpoints" / f"step-{s['step']}", w, s)
    if snaps:
        last = info["history"][-1]
        final_row = {k: last[k] for k in last if k != "per_token"} | {"phase": "final"}
        _write_checkpoint_dir(
            model, tok, tmp / "checkpoints" / f"step-{info['step']}", final_weights, final_row
        )
        checkpoints = [*snaps, final_row]
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(final_weights[name])
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    card = build_card(
        recipe,
        fmt,
        steps_done=info["step"],
        wall_time_s=info["elapsed_s"],
        cpu_time_s=info["cpu_s"],
        metrics=metrics,
        stopped_early=stopped_early,
        checkpoints=checkpoints,
    )
    (tmp / "card.json").write_text(json.dumps(card, indent=2))
    (tmp / "history.json").write_text(json.dumps(info["history"]))
    (tmp / "README.md").write_text(render_readme(card))
    replace_dir(tmp, out_dir)
    return out_dir


def train(
    name_or_recipe: str | Path | Recipe,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    seed: int | None = None,
    resume: bool = True,
    threads: int | None = 1,
    stop_at: int | None = None,
    progress: bool = True,
    into_package: bool = False,
) -> Path:
    """Train a zoo model and write it as an HF directory at ``out_dir``.

    ``steps``/``seed`` override the recipe. With ``resume``, training continues
    from ``out_dir/_train_state`` if present (the recipe must match).
    ``stop_at`` stops after that many total steps, saving the training state
    but not the final model (a later call resumes). ``threads`` sets torch's
    intra-op threads for the call (restored afterwards; None leaves it).
    ``out_dir`` inside the package zoo (the shipped models) is refused unless
    ``into_package``. Returns ``out_dir``.
    """
    recipe = name_or_recipe if isinstance(name_or_recipe, Recipe) else load_recipe(name_or_recipe)
    recipe = recipe.with_overrides(steps=steps, seed=seed)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    _check_not_shipped(out_dir, into_package)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(recipe, out_dir, resume=resume, stop_at=stop_at, progress=progress)
    finally:
        torch.set_num_threads(previous)


def _train(
    recipe: Recipe, out_dir: Path, *, resume: bool, stop_at: int | None, progress: bool
) -> Path:
    fmt = TaskFormat.from_task(recipe.task)
    tok = build_tokenizer_for(fmt)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe, tok)
    model.train()
    aux_head = _AuxHead(model, recipe, fmt) if recipe.aux_loss is not None else None
    # what the optimizer and the training state hold: the model, and the aux head if any
    trained = model if aux_head is None else torch.nn.ModuleDict({"model": model, "aux": aux_head})
    opt = _optimizer(trained, recipe)
    rng = np.random.default_rng(recipe.seed)
    batches = _Batches(recipe, fmt, rng)
    state_dir = out_dir / STATE_DIRNAME
    recipe_json = recipe.model_dump(mode="json")
    info: dict[str, Any] = {"step": 0, "history": [], "snapshots": [], "elapsed_s": 0.0,
                            "cpu_s": 0.0}
    if resume and (state_dir / "state.json").exists():
        loaded = load_state(state_dir, trained, opt, rng)
        if loaded["recipe"] != recipe_json:
            raise ConfigError(
                f"{state_dir} was written by a different recipe; pass resume=False "
                "(--no-resume) to start over or choose another output directory"
            )
        info = {k: loaded[k] for k in info if k != "cpu_s"}
        info["cpu_s"] = loaded.get("cpu_s")  # None: a state from before the CPU clock, unknown
    elif state_dir.exists():
        shutil.rmtree(state_dir)

    def checkpoint() -> None:
        save_state(state_dir, trained, opt, rng, info | {"recipe": recipe_json})

    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]  # the recipe's lr; the schedule scales it every step
    start = time.perf_counter() - info["elapsed_s"]
    cpu_start = None if info["cpu_s"] is None else time.process_time() - info["cpu_s"]

    def clock() -> None:
        info["elapsed_s"] = time.perf_counter() - start
        if cpu_start is not None:
            info["cpu_s"] = time.process_time() - cpu_start

    bar = tqdm(
        total=recipe.steps,
        initial=info["step"],
        desc=recipe.name,
        disable=not progress,
        mininterval=5,
    )
    stopped_early = False
    last_test = float("nan")
    while info["step"] < recipe.steps:
        step = info["step"]
        if stop_at is not None and step >= stop_at:
            clock()
            checkpoint()
            bar.close()
            return out_dir
        factor = lr_factor(step, recipe)
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * factor
        ids, answers, aux_targets = batches.next()
        logits = _answer_logits(model, ids, fmt, recipe.lean_forward)
        loss = answer_loss(logits, answers, fmt, float64=recipe.loss_float64)
        if aux_head is not None:
            loss = loss + recipe.aux_loss.weight * aux_head.loss(aux_targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.optimizer.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trained.parameters(), recipe.optimizer.grad_clip)
        opt.step()
        info["step"] = step = step + 1
        bar.update(1)
        snap = recipe.snapshot_every is not None and step % recipe.snapshot_every == 0
        if step % recipe.eval.every == 0 or snap or step == recipe.steps:
            row = _evaluate_step(model, recipe, fmt, batches, info, loss.item(), snap, out_dir)
            last_test = row["test_accuracy"]
            es = recipe.early_stop
            stopped_early = es is not None and step >= es.min_step and (
                row["test_accuracy"] >= es.test_accuracy and row["test_loss"] <= es.test_loss)
        if step % 50 == 0 or step == recipe.steps:
            with torch.no_grad():
                acc = (logits.argmax(-1) == answers).all(-1).float().mean().item()
            bar.set_postfix(
                loss=f"{loss.item():.3g}", acc=f"{acc:.3f}", test_acc=f"{last_test:.4f}"
            )
        if step % recipe.checkpoint_every == 0 and step < recipe.steps and not stopped_early:
            clock()
            checkpoint()
        if stopped_early:
            break
    bar.close()
    clock()
    model.eval()
    if aux_head is not None:
        aux_head.remove()
    with hf_progress():  # transformers' "Writing model shards" bars, as lines in a log file
        return _finish(model, tok, recipe, fmt, out_dir, info, stopped_early)


def training_history(out_dir: str | Path) -> list[dict[str, Any]]:
    """The periodic evaluations of a run, finished (``history.json``) or in progress."""
    out_dir = Path(out_dir)
    if (out_dir / "history.json").is_file():
        return json.loads((out_dir / "history.json").read_text())
    state = out_dir / STATE_DIRNAME / "state.json"
    if state.is_file():
        return json.loads(state.read_text())["history"]
    raise FileNotFoundError(f"{out_dir} holds neither a finished model nor a training state")


def main(argv: list[str] | None = None) -> None:
    from arithinterp.zoo.destination import train_destination

    parser = argparse.ArgumentParser(
        prog="python -m arithinterp.zoo.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("name", help="recipe name or path to a recipe YAML")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output dir (default: ./<recipe name>, or a fresh ./<recipe name>-2...)",
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument(
        "--into-package", action="store_true",
        help="write into the package zoo (arithinterp/zoo/models/<name>), replacing the shipped model",
    )
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.name).with_overrides(steps=args.steps, seed=args.seed)
        out, note = train_destination(recipe, args.out, into_package=args.into_package)
        if note:
            print(f"note: {note}")
        path = train(recipe, out, resume=not args.no_resume, threads=args.threads,
                     into_package=args.into_package)
    except ArithInterpError as err:  # a user's mistake: one line, as `arithinterp train` gives it
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {path}")

if __name__ == "__main__":
    main()
