"""`arithinterp train` never overwrites a shipped model: by default it writes ./<recipe name>
(or a fresh name), and the package zoo needs --into-package. Nothing here trains: ``train`` is
replaced by a recorder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from arithinterp.errors import ConfigError
from arithinterp.zoo import destination, registry, state
from arithinterp.zoo.destination import train_destination
from arithinterp.zoo.recipe import load_recipe

RECIPE = load_recipe("add-2d")


@pytest.fixture
def fake_zoo(tmp_path, monkeypatch):
    zoo = tmp_path / "package_zoo"
    (zoo / "add-2d").mkdir(parents=True)
    (zoo / "add-2d" / "card.json").write_text("{}")
    monkeypatch.setattr(registry, "ZOO_DIR", zoo)
    return zoo


def _unfinished(path: Path, recipe) -> Path:
    (path / destination.STATE_DIRNAME).mkdir(parents=True)
    (path / destination.STATE_DIRNAME / "state.json").write_text(json.dumps({"recipe": recipe.model_dump(mode="json")}))
    return path


def test_the_state_dir_name_matches_the_trainer():
    assert destination.STATE_DIRNAME == state.STATE_DIRNAME


def test_default_is_a_new_directory_in_the_working_directory(tmp_path, fake_zoo):
    assert train_destination(RECIPE, cwd=tmp_path) == (tmp_path / "add-2d", None)
    (tmp_path / "add-2d").mkdir()  # empty: used as is
    assert train_destination(RECIPE, cwd=tmp_path) == (tmp_path / "add-2d", None)


def test_an_unfinished_training_of_the_same_recipe_is_resumed(tmp_path, fake_zoo):
    _unfinished(tmp_path / "add-2d", RECIPE)
    path, note = train_destination(RECIPE, cwd=tmp_path)
    assert path == tmp_path / "add-2d" and "resuming" in note


@pytest.mark.parametrize(("occupant", "why"), [
    ("finished", "a finished model"),
    ("other_seed", "another recipe, steps or seed"),
    ("user_files", "other files"),
])
def test_anything_else_gets_a_fresh_name_and_says_so(tmp_path, fake_zoo, occupant, why):
    taken = tmp_path / "add-2d"
    if occupant == "finished":
        taken.mkdir()
        (taken / "card.json").write_text("{}")
    elif occupant == "other_seed":
        _unfinished(taken, RECIPE.with_overrides(seed=7))
    else:
        taken.mkdir()
        (taken / "thesis.tex").write_text("mine")
    before = sorted(p.name for p in taken.iterdir())
    path, note = train_destination(RECIPE, cwd=tmp_path)
    assert path == tmp_path / "add-2d-2"
    assert why in note and str(taken) in note and str(path) in note and "left alone" in note
    assert sorted(p.name for p in taken.iterdir()) == before
    (tmp_path / "add-2d-2").mkdir()
    (tmp_path / "add-2d-2" / "x").write_text("x")
    assert train_destination(RECIPE, cwd=tmp_path)[0] == tmp_path / "add-2d-3"


def test_the_package_zoo_needs_the_flag(tmp_path, fake_zoo):
    with pytest.raises(ConfigError, match="inside the package zoo.*--into-package"):
        train_destination(RECIPE, fake_zoo / "add-2d")
    with pytest.raises(ConfigError, match="inside the package zoo"):
        train_destination(RECIPE, fake_zoo / "add-2d" / ".." / "new")
    path, note = train_destination(RECIPE, into_package=True, cwd=tmp_path)
    assert path == fake_zoo / "add-2d" and "package zoo" in note
    with pytest.raises(ConfigError, match="not both"):
        train_destination(RECIPE, tmp_path / "x", into_package=True)
    assert train_destination(RECIPE, tmp_path / "x") == (tmp_path / "x", None)


@pytest.fixture
def recorded(monkeypatch):
    """``train`` replaced by a recorder of where it would write."""
    import importlib
    import sys

    importlib.import_module("arithinterp.zoo.train")
    train_module = sys.modules["arithinterp.zoo.train"]  # the attribute `zoo.train` is the function
    calls: list[tuple] = []

    def fake_train(recipe, out_dir, **kwargs):
        calls.append((recipe, Path(out_dir), kwargs))
        return Path(out_dir)

    monkeypatch.setattr(train_module, "train", fake_train)
    return calls


def _cli(*args: str):
    from arithinterp.pipeline.cli import app

    return CliRunner().invoke(app, ["train", *args])


def test_cli_train_writes_to_the_working_directory(tmp_path, fake_zoo, recorded, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "add-2d").mkdir()
    (tmp_path / "add-2d" / "card.json").write_text("{}")
    res = _cli("add-2d", "--seed", "3")
    assert res.exit_code == 0, res.output
    recipe, out, _ = recorded[-1]
    assert out == Path("add-2d-2") and recipe.seed == 3
    assert "note: add-2d already holds a finished model" in res.output and "wrote add-2d-2" in res.output
    res = _cli("add-2d", "--into-package")
    assert res.exit_code == 0 and recorded[-1][1] == fake_zoo / "add-2d"
    res = _cli("add-2d", "--out", str(fake_zoo / "add-2d"))
    assert res.exit_code == 2 and "error:" in res.output and "--into-package" in res.output
    assert len(recorded) == 2


def test_module_main_has_the_same_rule(tmp_path, fake_zoo, recorded, monkeypatch, capsys):
    from arithinterp.zoo.train import main

    monkeypatch.chdir(tmp_path)
    main(["add-2d", "--steps", "5"])
    recipe, out, kwargs = recorded[-1]
    assert out == Path("add-2d") and recipe.steps == 5 and kwargs == {"resume": True, "threads": 1, "into_package": False}
    main(["add-2d", "--into-package", "--no-resume"])
    assert recorded[-1][1] == fake_zoo / "add-2d" and recorded[-1][2]["resume"] is False
    assert "note: training into the package zoo" in capsys.readouterr().out
    # A user's mistake is one error line and exit status 2, as `arithinterp train` gives it.
    with pytest.raises(SystemExit) as exit_info:
        main(["add-2d", "--out", str(fake_zoo / "add-2d")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--into-package" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["no-such-recipe"])
    assert "no recipe 'no-such-recipe'" in capsys.readouterr().err
