"""Where ``arithinterp train`` writes: never over a shipped model unless asked.

The two training command lines (``arithinterp train`` and ``python -m arithinterp.zoo.train``)
choose their output directory here:

- ``--out DIR``: that directory (``train`` itself refuses one that is not empty and not a zoo
  model or training directory). A directory inside the package zoo is refused without
  ``--into-package``.
- ``--into-package``: the package zoo, ``arithinterp/zoo/models/<recipe name>``, replacing the
  shipped model when training ends.
- neither: ``./<recipe name>`` in the working directory. If that exists and is not empty, it is
  resumed when it is an unfinished training of the same recipe (same steps and seed); otherwise
  the first free ``./<recipe name>-2``, ``-3``... is used, and the note says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from arithinterp.errors import ConfigError
from arithinterp.zoo import registry
from arithinterp.zoo.recipe import Recipe

#: :data:`arithinterp.zoo.state.STATE_DIRNAME`, spelled out: that module imports torch, and the
#: command line that calls this must start without it.
STATE_DIRNAME = "_train_state"

__all__ = ["train_destination"]


def _in_package(path: Path) -> bool:
    return path.resolve().is_relative_to(registry.ZOO_DIR.resolve())


def _unfinished_of(path: Path, recipe: Recipe) -> bool:
    """Whether ``path`` holds an unfinished training of exactly ``recipe`` (and no finished model)."""
    state = path / STATE_DIRNAME / "state.json"
    if (path / "card.json").exists() or not state.is_file():
        return False
    try:
        return json.loads(state.read_text()).get("recipe") == recipe.model_dump(mode="json")
    except (OSError, ValueError):
        return False


def _free(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def train_destination(recipe: Recipe, out: str | Path | None = None, *, into_package: bool = False,
                      cwd: str | Path | None = None) -> tuple[Path, str | None]:
    """The directory to train ``recipe`` into (the recipe with any ``--steps``/``--seed``
    applied), and a note for the user when it is not the obvious one (``None`` otherwise).

    Raises :class:`ConfigError` for ``--out`` inside the package zoo without ``into_package``,
    and for ``into_package`` with ``out``.
    """
    if out is not None:
        out = Path(out)
        if into_package:
            raise ConfigError(f"--into-package writes to {registry.ZOO_DIR / recipe.name}; give it or --out, "
                              "not both")
        if _in_package(out):
            raise ConfigError(f"{out} is inside the package zoo ({registry.ZOO_DIR}), which holds the shipped "
                              "models; pass --into-package to replace the shipped one, or choose a directory "
                              "outside the package")
        return out, None
    if into_package:
        target = registry.ZOO_DIR / recipe.name
        return target, f"training into the package zoo: {target} is replaced when training ends"
    base = Path(cwd if cwd is not None else ".") / recipe.name
    if _free(base):
        return base, None
    if _unfinished_of(base, recipe):
        return base, f"resuming the unfinished training in {base}"
    k = 2
    while not _free(base.with_name(f"{recipe.name}-{k}")) and not _unfinished_of(
            base.with_name(f"{recipe.name}-{k}"), recipe):
        k += 1
    fresh = base.with_name(f"{recipe.name}-{k}")
    why = "a finished model" if (base / "card.json").exists() else (
        "a training of another recipe, steps or seed" if (base / STATE_DIRNAME).exists() else "other files")
    verb = "resuming the unfinished training in" if _unfinished_of(fresh, recipe) else "writing to"
    return fresh, f"{base} already holds {why}, which is left alone; {verb} {fresh} instead (--out chooses)"
