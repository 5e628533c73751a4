"""Ship a finished training run into the package zoo.

``ship_run("/work/zoo_runs/add-5d")`` copies the HF directory (without any
training state) to ``arithinterp/zoo/models/add-5d``, re-saves the tokenizer
files with this version's tokenizer code (same vocabulary and ids), adds any
``notes`` to the card and regenerates ``README.md``. The copy is written next
to the destination and swapped in, so a failure leaves the old model intact.

Command line: ``python -m arithinterp.zoo.ship RUN_DIR [--note TEXT]...``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from arithinterp.errors import ModelLoadError
from arithinterp.zoo.card import render_readme
from arithinterp.zoo.data import TaskFormat
from arithinterp.zoo.modeling import build_tokenizer_for
from arithinterp.zoo.recipe import Recipe
from arithinterp.zoo.registry import ZOO_DIR
from arithinterp.zoo.state import replace_dir

__all__ = ["ship_run"]

_SKIP = ("_train_state", "_snapshots")


def ship_run(
    run_dir: str | Path, *, notes: Sequence[str] = (), zoo_dir: Path | None = None
) -> Path:
    """Copy a finished run into the zoo; returns the shipped directory."""
    run_dir = Path(run_dir)
    needed = ("config.json", "model.safetensors", "card.json")
    missing = [f for f in needed if not (run_dir / f).is_file()]
    if missing:
        raise ModelLoadError(f"{run_dir} is not a finished run (missing {', '.join(missing)})")
    card = json.loads((run_dir / "card.json").read_text())
    dest = (zoo_dir or ZOO_DIR) / card["name"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.ship")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(run_dir, tmp, ignore=shutil.ignore_patterns(*_SKIP, "__pycache__"))
    tok = build_tokenizer_for(TaskFormat.from_task(Recipe.model_validate(card["recipe"]).task))
    for model_dir in [tmp, *sorted((tmp / "checkpoints").glob("step-*"))]:
        tok.save_pretrained(model_dir)
    if notes:
        card["notes"] = [*card.get("notes", []), *notes]
    (tmp / "card.json").write_text(json.dumps(card, indent=2))
    (tmp / "README.md").write_text(render_readme(card))
    replace_dir(tmp, dest)
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m arithinterp.zoo.ship", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--note", action="append", default=[], help="a line for the card's notes")
    args = parser.parse_args(argv)
    print(f"shipped {ship_run(args.run_dir, notes=args.note)}")


if __name__ == "__main__":
    main()
