"""The method registry: every declaration agrees with its function, and a method registered in a
test shows as a pipeline step, a report column and figure, and a dashboard panel, with no other
file edited."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from pydantic import BaseModel

from arithinterp.errors import ConfigError
from arithinterp.methods import registry
from arithinterp.methods.registry import (
    MethodSpec,
    Panel,
    ReportColumn,
    ReportView,
    RunContext,
    check_options,
    options_model,
    registered,
)
from arithinterp.models import load_model
from arithinterp.results import Result, ScalarTable
from arithinterp.results.meta import ResultMeta
from arithinterp.tasks import PromptSet, TaskSpec, generate, make_pairs
from tests.conftest import scaled_variant

BUILTIN = ("evaluate", "digit_confidence", "logit_lens", "number_lens", "tuned_lens", "patching", "attribution",
           "edge_attribution", "position_edges", "mediation", "dla", "cna", "probes", "helix", "fourier", "heuristics",
           "operand_maps", "circuit", "attention", "causal_variables")


def test_the_builtin_methods_are_registered_once_each():
    assert tuple(registry.methods()) == BUILTIN
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(MethodSpec(name="patching", function=lambda model, prompts: None, inputs="prompts",
                                     result=Result))


@pytest.mark.parametrize("name", BUILTIN)
def test_every_option_is_the_functions_keyword_with_its_default(name):
    spec = registry.get_method(name)
    assert check_options(spec) == []
    params = inspect.signature(spec.function).parameters
    checked = [o for o in spec.options.model_fields if o not in spec.step_only]
    for option in checked:  # the known answer: the function's own default, read here independently
        keyword = spec.aliases.get(option, option)
        default = spec.options.model_fields[option].get_default(call_default_factory=True)
        expected = params[keyword].default
        assert list(default) == list(expected) if isinstance(default, (list, tuple)) else default == expected
    for result in spec.result_classes:
        assert hasattr(result, "save") and hasattr(result, "load")


def test_check_options_reports_a_renamed_keyword_and_another_default():
    def method(model, prompts, *, alpha: int = 1, beta: str = "x"):
        return None

    class Wrong(BaseModel):
        alpha: int = 2
        gamma: str = "x"

    spec = MethodSpec(name="wrong", function=method, inputs="prompts", result=Result, options=Wrong)
    problems = check_options(spec)
    assert len(problems) == 2
    assert "default 2" in problems[0] and "alpha=1" in problems[0]
    assert "no keyword 'gamma'" in problems[1]


def test_generated_options_mirror_the_keywords():
    def method(model, prompts, *, k: int = 3, mode: str = "a", seed: int = 0, progress: bool = True):
        return None

    options = options_model(method, "toy_thing")
    assert options.__name__ == "ToyThingOptions"
    assert set(options.model_fields) == {"k", "mode"}  # seed and progress come from the context
    assert options().k == 3
    with pytest.raises(ValueError):
        options(k="not an int")
    with pytest.raises(ValueError):
        options(unknown=1)
    spec = MethodSpec(name="toy_thing", function=method, inputs="prompts", result=Result)
    assert check_options(spec) == []
    with pytest.raises(ConfigError, match="clashes with a pipeline step"):
        MethodSpec(name="bad", function=lambda model, prompts, *, kind="x": None, inputs="prompts", result=Result)


# -- a toy method, registered only inside the tests below -----------------------------------------


def toy_scores(model, prompts: PromptSet, *, scale: float = 1.0) -> ScalarTable:
    """A known answer per head: ``scale * (10 * layer + head + 1)``."""
    s = model.shape
    data = np.array([[scale * (10 * layer + head + 1) for head in range(s.n_heads)] for layer in range(s.n_layers)])
    meta = ResultMeta(method="toy_scores", model=model.name, seed=0, options={"scale": scale},
                      dataset_hash=prompts.hash)
    return ScalarTable.from_array(data, dims=("layer", "head"), meta=meta, metric="toy",
                                  coords={"layer": np.arange(s.n_layers), "head": np.arange(s.n_heads)})


def _toy_report(ctx: RunContext) -> dict:
    return {"toy": toy_scores(ctx.model, ctx.prompts, scale=2.0)}


TOY = MethodSpec(
    name="toy", function=toy_scores, inputs="prompts", result=ScalarTable,
    report=ReportView(run=_toy_report, columns=(ReportColumn("toy_score", "heads", "toy"),),
                      figures={"toy": "Toy scores per head"}),
    panels=(Panel("toy", "Toy score"),),
)

SMALL = TaskSpec(operation="add", operand_range=(0, 4), format="plain")


@pytest.fixture(scope="module")
def tiny_dir(tiny_hf_dirs, tmp_path_factory):
    return scaled_variant(tiny_hf_dirs["gpt2"], tmp_path_factory.mktemp("scaled") / "gpt2", scale=4.0)


def test_a_registered_method_is_a_pipeline_step(tiny_dir, tmp_path):
    from arithinterp.pipeline import load_config
    from arithinterp.pipeline.config import parse_config
    from arithinterp.pipeline.runner import run_pipeline

    config = {"name": "toy-run", "model": str(tiny_dir), "task": {**SMALL.model_dump(mode="json"), "n": 8},
              "steps": [{"kind": "toy", "scale": 3.0}]}
    with pytest.raises(ConfigError, match=r"valid kinds: .*circuit"):
        parse_config(dict(config))  # not registered yet: an unknown kind
    with registered(TOY):
        with pytest.raises(ConfigError, match=r"steps\[0\]\.scale"):
            parse_config({**config, "steps": [{"kind": "toy", "scale": "big"}]})
        path = tmp_path / "toy.yaml"
        import yaml

        path.write_text(yaml.safe_dump(config))
        summary = run_pipeline(load_config(path), runs_dir=tmp_path / "runs", progress=False, log=lambda _: None)
        saved = Result.load(tmp_path / "runs" / "toy-run" / "toy")
    expected = toy_scores(load_model(str(tiny_dir)), generate(SMALL.model_copy(update={"n": 8})), scale=3.0)
    np.testing.assert_array_equal(saved.values.values, expected.values.values)
    assert summary.results["toy"].values.sel(layer=1, head=2) == 3.0 * 13
    assert "toy" not in registry.methods()


def test_a_registered_method_is_a_report_column_figure_and_dashboard_panel(tiny_dir, tmp_path):
    from arithinterp.dashboard.data import Report
    from arithinterp.dashboard.evidence import component_detail
    from arithinterp.reports import build_report
    from arithinterp.reports.page import render_report

    model = load_model(str(tiny_dir))
    with registered(TOY):
        report = build_report(model, SMALL, n=8, methods=["toy", "dla"], progress=False)
        assert report.summary["methods"] == ["dla", "toy"]  # report order: built-ins' order, then new ones
        heads = report.heads.set_index("component")
        for layer in range(model.shape.n_layers):
            for head in range(model.shape.n_heads):
                label = heads.index[(heads["layer"] == layer) & (heads["head"] == head)][0]
                assert heads.loc[label, "toy_score"] == 2.0 * (10 * layer + head + 1)
        assert "Toy scores per head" in render_report(report)
        report.save(tmp_path / "report")
        detail = component_detail(Report.load(tmp_path / "report"), "L1H2")
        panel = detail["panels"]["Toy score"]
        assert panel.available and float(panel.data["toy"].iloc[0]) == 2.0 * 13
        neuron = component_detail(Report.load(tmp_path / "report"), "L0N3")["panels"]["Toy score"]
        assert not neuron.available and "does not cover" in neuron.reason
    assert "toy_score" not in build_report(model, SMALL, n=8, methods=["dla"], progress=False).heads


def test_run_context_tokenizes_once(tiny_dir):
    model = load_model(str(tiny_dir))
    prompts = generate(SMALL.model_copy(update={"n": 8}))
    ctx = RunContext(model=model, spec=SMALL, prompts=prompts, pairs=make_pairs(prompts, "operand_a", seed=0))
    assert ctx.tokens("multi") is ctx.tokens("multi")
    assert ctx.batch("single") is ctx.batch("single")
    assert ctx.answer == "single"
    assert ctx.batch("single").clean.shape[0] == 8
