"""Finding and loading runs, path safety, and the evidence read for one component, checked
against the stored results themselves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arithinterp.dashboard.data import (
    DashboardError,
    Report,
    RunSet,
    find_reports,
    inside,
    parse_component,
)
from arithinterp.dashboard.evidence import component_detail
from arithinterp.errors import ArithInterpError
from arithinterp.results import Result


@pytest.fixture(scope="module")
def full(runs_dir) -> Report:
    return RunSet(runs_dir).get("full")


def _copy(runs_dir: Path, tmp_path: Path, name: str = "full") -> Path:
    return Path(shutil.copytree(runs_dir / name / "report", tmp_path / "copy" / "report"))


# ---- finding runs ---------------------------------------------------------------------------------


def test_find_reports_accepts_report_run_and_runs_directories(runs_dir):
    report = runs_dir / "full" / "report"
    assert find_reports(report) == {"full": report}  # named after its run
    assert find_reports(runs_dir / "full") == {"full": report}
    assert find_reports(runs_dir) == {"full": report, "small": runs_dir / "small" / "report"}


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_bad_run_dir_is_a_clear_user_error(tmp_path, make):
    path = tmp_path / "x"
    if make == "file":
        path.write_text("")
    elif make == "empty":
        path.mkdir()
    with pytest.raises(ArithInterpError, match="report directory.*run directory"):
        RunSet(path)


def test_malformed_summary_and_missing_tables_are_refused(runs_dir, tmp_path):
    report = _copy(runs_dir, tmp_path)
    (report / "summary.json").write_text("{not json")
    with pytest.raises(DashboardError, match=r"summary.json is not valid JSON"):
        RunSet(report)
    (report / "summary.json").write_text("{}")
    for stem in ("heads", "neurons"):
        for ext in ("parquet", "json"):
            (report / f"{stem}.{ext}").unlink()
    with pytest.raises(DashboardError, match="neither a head table nor a neuron table"):
        RunSet(report)


def test_json_table_is_read_when_parquet_is_absent(runs_dir, tmp_path, full):
    report = _copy(runs_dir, tmp_path)
    (report / "heads.parquet").unlink()
    heads = Report.load(report).heads
    pd.testing.assert_frame_equal(heads, full.heads, check_dtype=False)


# ---- path safety --------------------------------------------------------------------------------


def test_inside_refuses_paths_leaving_the_run(tmp_path):
    (tmp_path / "run" / "results").mkdir(parents=True)
    root = tmp_path / "run"
    assert inside(root, "results") == (root / "results").resolve()
    for bad in ("../secret", "results/../../secret", "/etc/passwd"):
        with pytest.raises(DashboardError, match="outside the run directory|absolute path"):
            inside(root, bad)
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(DashboardError, match="outside the run directory"):
        inside(root, "link/secret")


def test_summary_naming_a_result_outside_the_run_is_refused(runs_dir, tmp_path):
    report = _copy(runs_dir, tmp_path)
    summary = json.loads((report / "summary.json").read_text())
    summary["results"]["logit_lens"] = "../../../etc"
    (report / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(DashboardError, match="outside the run directory"):
        RunSet(report)


def test_symlinked_run_pointing_elsewhere_is_refused(runs_dir, tmp_path):
    outer = tmp_path / "runs"
    outer.mkdir()
    (outer / "elsewhere").symlink_to(runs_dir / "full")
    with pytest.raises(DashboardError, match="outside the run directory"):
        RunSet(outer)


def test_only_known_runs_and_results_are_served(runs_dir, full):
    runs = RunSet(runs_dir)
    for key in ("../full", str(runs_dir / "full"), None, 3):
        with pytest.raises(DashboardError, match="unknown run"):
            runs.get(key)
    with pytest.raises(DashboardError, match="unknown result"):
        full.result("../../summary")
    with pytest.raises(DashboardError, match="not a component label"):
        parse_component("../L0H1")


# ---- evidence equals the stored data ------------------------------------------------------------


def test_row_and_top_prompts_are_the_stored_ones(full):
    detail = component_detail(full, "L0H2")
    stored = pd.read_parquet(full.root / "heads.parquet").set_index("component").loc["L0H2"]
    row = detail["row"].data
    assert row["rank"] == stored["rank"]
    assert row["patch_effect"] == pytest.approx(stored["patch_effect"], abs=0)
    assert row["in_circuit"] == bool(stored["in_circuit"])
    top = json.loads((full.root / "top_prompts.json").read_text())["L0H2"]
    assert detail["top_prompts"].data == top


def test_lens_trajectory_is_the_stored_mean(full):
    lens = Result.load(full.root / "results" / "logit_lens")
    expected = lens.values.mean("prompt").isel(pos=int(np.flatnonzero(lens.values.coords["is_answer"])[0]))
    data = component_detail(full, "L0H1")["lens"].data
    assert data["depth_labels"] == list(lens.values.coords["layer_label"].values)
    np.testing.assert_allclose(data["series"][0]["prob"], expected.values, rtol=0, atol=0)
    assert (data["before"], data["after"]) == (0, 1)


def test_probe_evidence_reads_the_sites_around_the_component(full):
    probes = Result.load(full.root / "results" / "probes")
    head = component_detail(full, "L0H2")["probes"].data
    neuron = component_detail(full, "L0N5")["probes"].data
    assert head["sites"] == {"in": "L0 pre", "out": "L0 mid"}
    assert neuron["sites"] == {"in": "L0 mid", "out": "L0 post"}
    for row in head["rows"] + neuron["rows"]:
        scores = probes.values.sel(target=row["target"], site=row["site"])
        assert row["score"] == float(scores.max())
        assert row["pos"] == int(scores.pos[int(scores.argmax())])


def test_probe_evidence_never_reports_a_masked_position(runs_dir, tmp_path):
    """Where the teacher-forced input shows the target, the score reads the input: the panel skips
    that position (as the report's tables and figure do) and names it under ``masked``."""
    import dataclasses

    import xarray as xr

    root = _copy(runs_dir, tmp_path)
    probes = Result.load(root / "results" / "probes")
    at = probes.values.sel(target="SC_0", site="L0 mid")
    best = int(at.pos[int(at.argmax())])
    mask = xr.zeros_like(probes.values.isel(site=0, drop=True), dtype=bool)
    mask.loc[{"target": "SC_0", "pos": best}] = True
    dataclasses.replace(probes, extras={**probes.extras, "answer_visible": mask}).save(root / "results" / "probes")
    runs = RunSet(root)
    report = runs.get(runs.names[0])
    rows = component_detail(report, "L0H2")["probes"].data["rows"]
    row = next(r for r in rows if r["target"] == "SC_0" and r["site"] == "L0 mid")
    others = at.where(at.pos != best)
    assert row["pos"] != best and row["score"] == float(others.max()) and row["masked"] == str(best)


def test_fourier_and_neuron_maps_of_a_neuron_are_the_stored_ones(full):
    freqs = Result.load(full.root / "results" / "key_frequencies")
    maps = Result.load(full.root / "results" / "neuron_maps")
    detail = component_detail(full, "L0N3")
    fourier = detail["fourier"].data
    assert fourier["key_freq"] == int(freqs.extras["key_freq"].sel(neuron=3))
    assert fourier["explained"] == float(freqs.values.sel(neuron=3))
    grid = detail["neuron_map"].data
    np.testing.assert_array_equal(grid["k"], maps.grid(3).values)
    np.testing.assert_array_equal(grid["kv"], maps.grid(3, kind="kv").values)
    assert grid["operand_a"] == list(range(20))


def test_absent_evidence_says_why(runs_dir, full):
    head = component_detail(full, "L0H0")
    assert "do not cover heads" in head["fourier"].reason
    assert "not whole MLPs" in component_detail(full, "MLP0")["fourier"].reason
    assert "MLP neurons only" in head["neuron_map"].reason
    unmapped = component_detail(full, "L0N400")  # maps were drawn for neurons 0..15
    assert "has no K/KV map" in unmapped["neuron_map"].reason
    small = component_detail(RunSet(runs_dir).get("small"), "L0H0")
    assert small["row"].available
    for name in ("lens", "probes", "fourier", "neuron_map"):
        assert small[name].reason.startswith("this run has no ")
    assert "not in the table" in component_detail(full, "L5H0")["row"].reason
