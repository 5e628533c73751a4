"""Finding zoo models by name, and the zoo CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import arithinterp.zoo.registry as registry
from arithinterp.errors import ModelLoadError
from arithinterp.zoo.cli import train_cmd, zoo_app


@pytest.fixture
def fake_zoo(tmp_path, monkeypatch):
    """A zoo directory with one model that has two checkpoints."""
    model = tmp_path / "toy"
    for d in (model, model / "checkpoints" / "step-10", model / "checkpoints" / "step-200"):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"")
    card = {
        "name": "toy",
        "task": "modadd",
        "headline": {"metric": "test_accuracy", "value": 0.99, "n": 10, "sample": "x"},
        "metrics": {"train": {"accuracy": 1.0}},
    }
    (model / "card.json").write_text(json.dumps(card))
    (tmp_path / "half-written").mkdir()  # no config.json: not a model
    monkeypatch.setattr(registry, "ZOO_DIR", tmp_path)
    return tmp_path


def test_list_and_path(fake_zoo):
    [entry] = registry.list_zoo()
    assert (entry.name, entry.task, entry.headline) == ("toy", "modadd", 0.99)
    assert entry.path == fake_zoo / "toy" == registry.zoo_path("toy")


def test_unknown_name_lists_available(fake_zoo):
    with pytest.raises(ModelLoadError, match=r"no zoo model 'nope'; available: toy"):
        registry.zoo_path("nope")
    with pytest.raises(ModelLoadError):
        registry.zoo_path("half-written")
    with pytest.raises(ModelLoadError):
        registry.zoo_path("../toy")


def test_checkpoints(fake_zoo):
    assert registry.list_checkpoints("toy") == [10, 200]
    assert registry.load_checkpoint_dir("toy", 200) == fake_zoo / "toy" / "checkpoints" / "step-200"
    with pytest.raises(ModelLoadError, match="available steps: 10, 200"):
        registry.load_checkpoint_dir("toy", 5)


def test_cli_list(fake_zoo):
    result = CliRunner().invoke(zoo_app, ["list"])
    assert result.exit_code == 0, result.output
    assert (
        "toy" in result.output and "99.0000%" in result.output and "train 100.00%" in result.output
    )


def test_train_cmd_mounts_as_a_command():
    import typer

    app = typer.Typer()
    app.command("train")(train_cmd)
    app.command("other")(lambda: None)
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--steps", "--seed", "--into-package"):
        assert option in result.output


def test_ship_run_copies_without_training_state(tmp_path):
    from arithinterp.zoo.ship import ship_run
    from arithinterp.zoo.train import train
    from tests.zoo.test_train import shrunk

    run = train(shrunk("add-2d-tok", steps=3, every=100), tmp_path / "run", progress=False)
    (run / "_snapshots").mkdir()  # leftovers of an interrupted run are not shipped
    zoo = tmp_path / "zoo"
    shipped = ship_run(run, notes=["a note"], zoo_dir=zoo)
    assert shipped == zoo / "add-2d-tok"
    assert not (shipped / "_snapshots").exists()
    assert json.loads((shipped / "card.json").read_text())["notes"] == ["a note"]
    readme = (shipped / "README.md").read_text()
    assert "a note" in readme and "## Load" in readme
    with pytest.raises(ModelLoadError, match="not a finished run"):
        ship_run(tmp_path / "zoo")
