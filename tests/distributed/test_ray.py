"""The Ray executor on a real local cluster (started here on 127.0.0.1 with 2 CPUs, once for
the module, and shut down after it): a patching sweep, attribution (node and edge) and
mediation sweeps, a probe sweep, a whole pipeline and a report step equal the serial run bit for bit, a task whose worker dies is retried, a worker that cannot
load the model reports the model's error, and an unreachable address fails fast with nothing
written."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from arithinterp.distributed import DistributedError, LocalExecutor, ModelRecipe, RayExecutor  # noqa: E402
from arithinterp.errors import ModelLoadError  # noqa: E402
from arithinterp.methods import fit_probes, patch_activations  # noqa: E402
from arithinterp.methods.attribution import attribution_patch  # noqa: E402
from arithinterp.methods.edge_attribution import edge_attribution_patch  # noqa: E402
from arithinterp.methods.mediation import mediate  # noqa: E402
from arithinterp.models import load_model  # noqa: E402
from arithinterp.pipeline import load_config, run_pipeline  # noqa: E402
from arithinterp.results import Result  # noqa: E402
from arithinterp.tasks import TaskSpec, generate, make_pairs  # noqa: E402


@pytest.fixture(scope="module")
def executor(one_intra_op_thread):
    if ray.is_initialized():  # another module's instance: not ours to reuse
        ray.shutdown()
    ex = RayExecutor(num_workers=2, threads=1)
    try:
        yield ex
    finally:
        ex.close()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def model():
    return load_model("zoo:add-5d")


@pytest.fixture(scope="module")
def prompts():
    return generate(TaskSpec(operation="add", digits=5, format="fixed", n=96, seed=1))


@pytest.fixture(scope="module")
def sweep_pairs():
    # 36 pairs in batches of 12: three tasks over two workers
    return make_pairs(generate(TaskSpec(operation="add", digits=5, format="fixed", n=36, seed=4)), "operand_b", seed=0)


def _same(a: Result, b: Result) -> None:
    assert a.values.dims == b.values.dims
    np.testing.assert_array_equal(a.values.values, b.values.values)
    assert set(a.extras) == set(b.extras)
    for name in a.extras:
        np.testing.assert_array_equal(a.extras[name].values, b.extras[name].values)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_patching_sweep_equals_the_serial_run(executor, model, prompts):
    pairs = make_pairs(prompts, "operand_b", seed=0)
    common = dict(kind="attn_head", per_position=True, batch_size=24, n_boot=200, progress=False)
    serial = patch_activations(model, pairs, **common)
    sharded = patch_activations(model, pairs, executor=executor, **common)
    _same(serial, sharded)
    assert serial.meta.extra == sharded.meta.extra
    assert np.abs(serial.values.values).max() > 0


def _serial_local_ray(run, executor) -> Result:
    """``run(executor=...)`` serially, on the local executor and on Ray: the same numbers, CIs and meta."""
    serial = run(executor=None)
    for sharded in (run(executor=LocalExecutor()), run(executor=executor)):
        _same(serial, sharded)
        assert serial.meta.options == sharded.meta.options and serial.meta.extra == sharded.meta.extra
    return serial


@pytest.mark.parametrize(("method", "freeze_norm", "kind"), [
    ("atp", False, "attn_head"), ("atp", True, "attn_head"),
    ("ig_activations", False, "mlp_post"), ("ig_activations", True, "mlp_post"), ("atp_star", False, "q"),
])
def test_attribution_sweep_equals_the_serial_run(executor, model, sweep_pairs, method, freeze_norm, kind):
    serial = _serial_local_ray(lambda executor: attribution_patch(
        model, sweep_pairs, kind=kind, method=method, freeze_norm=freeze_norm, ig_steps=3, batch_size=12,
        n_boot=200, progress=False, executor=executor), executor)
    assert np.abs(serial.effect.values).max() > 0


def test_edge_attribution_sweep_equals_the_serial_run(executor, model, sweep_pairs):
    serial = _serial_local_ray(lambda executor: edge_attribution_patch(
        model, sweep_pairs, receivers=("attn_in", "q", "mlp_in", "logits"), batch_size=12, n_boot=200,
        progress=False, executor=executor), executor)
    assert np.nanmax(np.abs(serial.values.values)) > 0


def test_mediation_sweep_equals_the_serial_run(executor, model, sweep_pairs):
    serial = _serial_local_ray(lambda executor: mediate(
        model, sweep_pairs, batch_size=12, n_boot=200, progress=False, executor=executor), executor)
    assert np.abs(serial.values.values).max() > 0 and np.isfinite(serial.total_effect)


def test_probe_sweep_equals_the_serial_run(executor, model, prompts):
    common = dict(targets=["SC_2", "operand_a"], positions=[4, 10, 11], n_boot=20, batch_size=32, progress=False)
    _same(fit_probes(model, prompts, **common), fit_probes(model, prompts, executor=executor, **common))
    _same(fit_probes(model, prompts, stream=True, **common),
          fit_probes(model, prompts, stream=True, executor=executor, **common))


def _write_pipeline(path: Path, **extra) -> Path:
    import yaml

    config = {
        "name": "ray", "model": "zoo:add-5d", "report": False,
        "task": {"operation": "add", "digits": 5, "format": "fixed", "n": 64, "seed": 2},
        "pairs": {"kind": "operand_a"},
        "steps": [
            {"kind": "evaluate"},
            {"kind": "patching", "sites": "resid_pre", "n_boot": 50, "batch_size": 16},
            {"kind": "attribution", "sites": "attn_head", "method": "ig_activations", "freeze_norm": True,
             "ig_steps": 3, "n_boot": 50, "batch_size": 16},
            {"kind": "mediation", "per_position": False, "n_boot": 50, "batch_size": 16},
            {"kind": "probes", "targets": ["SC_1"], "n_boot": 10},
            {"kind": "logit_lens"},
        ],
        **extra,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_pipeline_equals_the_local_run_and_resumes(executor, tmp_path):
    config = load_config(_write_pipeline(tmp_path / "p.yaml"))
    local = run_pipeline(config, runs_dir=tmp_path / "local", progress=False, log=lambda _: None)
    remote = run_pipeline(config, runs_dir=tmp_path / "ray", progress=False, log=lambda _: None,
                          executor=executor)
    assert list(local.results) == list(remote.results)
    for key in local.results:
        _same(local.results[key], remote.results[key])
    for step in ("patching", "attribution", "mediation"):  # these ran here, sharding their pairs
        record = (tmp_path / "ray" / "ray" / step / "step.json").read_text()
        assert '"executor": "ray"' in record and '"threads": 1' in record
    # the same fingerprint whichever executor ran it: a Ray rerun recomputes nothing
    again = run_pipeline(config, runs_dir=tmp_path / "local", progress=False, log=lambda _: None,
                         executor=executor)
    assert sorted(again.skipped) == sorted(config.step_names())


@pytest.mark.slow
def test_a_report_step_shards_its_sweeps_over_ray(executor, tmp_path, monkeypatch):
    """With --executor ray the report step runs in the driver and spreads its patching,
    attribution, mediation, probe and circuit-edge sweeps over the workers: the report equals
    the local one, result by result."""
    import pandas as pd

    methods = ["patching", "attribution", "mediation", "probes", "circuit"]
    config = load_config(_write_pipeline(tmp_path / "p.yaml", steps=[
        {"kind": "report", "n": 24, "methods": methods}]))
    local = run_pipeline(config, runs_dir=tmp_path / "local", progress=False, log=lambda _: None)
    sweeps: list[str] = []
    real_map = executor.map

    def counting(fn, items, **kwargs):
        sweeps.append(kwargs.get("desc") or "")
        return real_map(fn, items, **kwargs)

    monkeypatch.setattr(executor, "map", counting)
    remote = run_pipeline(config, runs_dir=tmp_path / "ray", progress=False, log=lambda _: None,
                          executor=executor)
    assert {"patching", "mediation", "probes: cache"} <= set(sweeps), sweeps
    rel = local.attribution_report.relative_to(tmp_path / "local" / "ray").as_posix()
    serial, sharded = local.artifacts[rel], remote.artifacts[rel]
    assert set(serial.results) == set(sharded.results) and len(serial.results) >= len(methods)
    for name, result in serial.results.items():
        if isinstance(result, Result):
            _same(result, sharded.results[name])
    pd.testing.assert_frame_equal(serial.heads, sharded.heads)
    record = (tmp_path / "ray" / "ray" / "report" / "step.json").read_text()
    assert '"executor": "ray"' in record


def _dies_once(model, item):
    marker, value = item
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)  # the worker process dies mid-task
    return value * 2, int(marker.read_text()) != os.getpid()


def test_a_killed_worker_is_retried(executor, model, tmp_path):
    items = [(tmp_path / f"m{i}", i) for i in range(3)]
    out = executor.map(_dies_once, items, model=model)
    assert out == [(0, True), (2, True), (4, True)]  # each retried on a fresh worker process


def test_a_worker_that_cannot_load_the_model_reports_the_model_error(executor):
    handle = executor.submit(_dies_once, None, model=ModelRecipe("/no/such/model/dir"))
    with pytest.raises(ModelLoadError, match="/no/such/model/dir"):
        executor.result(handle)


def test_an_unreachable_address_fails_fast_and_writes_nothing(tmp_path):
    config = load_config(_write_pipeline(tmp_path / "p.yaml", executor="ray"))
    address = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(DistributedError, match="no Ray cluster answers at 127.0.0.1"):
        run_pipeline(config, runs_dir=tmp_path / "runs", progress=False, address=address)
    assert time.monotonic() - start < 10
    assert not (tmp_path / "runs").exists()


def test_the_cli_says_so(tmp_path):
    from typer.testing import CliRunner

    from arithinterp.pipeline.cli import app

    path = _write_pipeline(tmp_path / "p.yaml")
    address = f"127.0.0.1:{_free_port()}"
    got = CliRunner().invoke(app, ["run", str(path), "--runs-dir", str(tmp_path / "runs"),
                                   "--executor", "ray", "--address", address])
    assert got.exit_code == 2
    assert "no Ray cluster answers" in got.output and "Traceback" not in got.output
    assert not (tmp_path / "runs").exists()
