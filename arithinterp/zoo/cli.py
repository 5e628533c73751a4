"""Command-line entry points of the zoo.

``zoo_app`` is a typer app (``list``); ``train_cmd`` is a plain function meant
to be registered as ``arithinterp train NAME --out --steps --seed --into-package``
(where it writes: :mod:`arithinterp.zoo.destination`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from arithinterp.errors import ArithInterpError
from arithinterp.zoo.destination import train_destination
from arithinterp.zoo.recipe import load_recipe, recipe_names
from arithinterp.zoo.registry import list_zoo, zoo_path

__all__ = ["train_cmd", "zoo_app"]

zoo_app = typer.Typer(help="The shipped model zoo.", no_args_is_help=True)


@zoo_app.callback()
def _zoo() -> None:
    """The shipped model zoo."""  # a callback keeps `zoo` a group with subcommands


@zoo_app.command("list")
def list_cmd() -> None:
    """List shipped models with their headline accuracy."""
    entries = list_zoo()
    if not entries:
        typer.echo(f"no zoo models shipped yet; recipes: {', '.join(recipe_names())}")
        return
    width = max(len(e.name) for e in entries)
    for e in entries:
        extra = ""
        if "train" in e.metrics:
            extra = f"  (train {e.metrics['train']['accuracy']:.2%})"
        typer.echo(f"{e.name:<{width}}  {e.task:<8} {e.headline_metric} {e.headline:.4%}{extra}")


@zoo_app.command("path")
def path_cmd(name: Annotated[str, typer.Argument(help="zoo model name")]) -> None:
    """Print the directory of a shipped model."""
    try:
        typer.echo(str(zoo_path(name)))
    except ArithInterpError as err:
        _fail(err)


def _fail(err: ArithInterpError) -> None:
    """Report a user error as the other commands do: one line on stderr, exit status 2."""
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2) from None


def train_cmd(
    name: Annotated[str, typer.Argument(help="recipe name (see `zoo list`) or YAML path")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="output dir (default: ./<recipe name>, or a fresh ./<recipe name>-2...)"),
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="override the step count")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="override the seed")] = None,
    into_package: Annotated[
        bool,
        typer.Option("--into-package", help="write into the package zoo, replacing the shipped model"),
    ] = False,
) -> None:
    """Train a zoo model from its recipe and write it as an HF directory.

    It never overwrites a shipped model: by default it writes ./<recipe name> in the working
    directory (resuming an unfinished training of the same recipe there, else a fresh
    ./<recipe name>-2...); --into-package writes arithinterp/zoo/models/<recipe name>.
    """
    from arithinterp.zoo.train import train

    try:
        recipe = load_recipe(name).with_overrides(steps=steps, seed=seed)
        target, note = train_destination(recipe, out, into_package=into_package)
        if note:
            typer.echo(f"note: {note}")
        path = train(recipe, target, into_package=into_package)
    except ArithInterpError as err:
        _fail(err)
    typer.echo(f"wrote {path}")
