"""Every shipped experiment validates (without running) and names a model that exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from arithinterp.errors import ModelLoadError
from arithinterp.models.loading import resolve_spec
from arithinterp.pipeline import load_config

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
CONFIGS = sorted(EXPERIMENTS.glob("**/*.yaml"))

#: Zoo models an experiment is written for before they ship (the config must validate now). When
#: one ships, test_experiment_validates fails here: remove it from this list.
PENDING_MODELS: dict[str, str] = {}


def test_there_is_one_experiment_per_finding():
    folders = {p.parent.name for p in CONFIGS if p.parent != EXPERIMENTS}
    assert folders >= {"grokking-modadd-113", "carries-add-5d", "running-sum-mul-3d", "mediation-add-2d-tok",
                       "heuristics-add-2d-tok", "fourier-helix-add-2d-tok", "pretrained-llm", "operators-ops-2d-tok"}
    for folder in folders:
        readme = EXPERIMENTS / folder / "README.md"
        assert readme.is_file(), f"{folder} has no README stating the claim and our measurement"
        assert "Measured" in readme.read_text() or folder == "pretrained-llm"


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(EXPERIMENTS)) for p in CONFIGS])
def test_experiment_validates(path):
    config = load_config(path)
    if config.model in PENDING_MODELS:
        with pytest.raises(ModelLoadError):  # not shipped yet; once it is, drop it from PENDING_MODELS
            resolve_spec(config.model)
    elif config.model.startswith("zoo:"):
        resolve_spec(config.model)  # raises ModelLoadError for a zoo name that does not exist
    names = {p.name for p in CONFIGS if p.parent == path.parent}
    assert len({load_config(path.parent / n).name for n in names}) == len(names), "run names must differ"


def test_the_operator_pipelines_run_the_models_own_tasks():
    """experiments/operators-ops-2d-tok: each pipeline's task is zoo:ops-2d-tok's own task for its
    operator (the format and operand domain it was trained on; n and seed are the run's)."""
    from arithinterp.zoo.default_tasks import spec_tasks

    own = {t.operation: t for t in spec_tasks("zoo:ops-2d-tok")}
    for op in ("add", "sub", "mul", "floordiv"):
        task = load_config(EXPERIMENTS / "operators-ops-2d-tok" / f"{op}.yaml").task
        assert task.model_copy(update={"n": own[op].n, "seed": own[op].seed}) == own[op]


DOCS = Path(__file__).resolve().parents[2] / "docs"


def _docs_pipelines() -> list[tuple[str, str]]:
    """Every ```yaml block of the docs that is a whole pipeline (it has ``steps:``)."""
    import re

    out = []
    for page in sorted(DOCS.glob("**/*.md")):
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", page.read_text(), flags=re.S)):
            if re.search(r"^steps:", block, flags=re.M):
                out.append((f"{page.relative_to(DOCS)}#{i}", block))
    return out


DOCS_PIPELINES = _docs_pipelines()


@pytest.mark.parametrize(("where", "text"), DOCS_PIPELINES, ids=[w for w, _ in DOCS_PIPELINES])
def test_docs_pipelines_validate(where, text):
    import yaml

    from arithinterp.pipeline.config import parse_config

    parse_config(yaml.safe_load(text), source=where)


def test_the_docs_show_a_pipeline():
    assert any(w.startswith("pipelines.md") for w, _ in DOCS_PIPELINES)
