"""Bad inputs, one table: every row is an input a new user might give, the error it must get,
and the guarantees that hold whatever the input.

Each row states the input (a call through the API, the pipeline, the CLI, a tampered file or
the dashboard's HTTP interface), the expected error class and a fragment of its message. For
every row the test also checks that

- the error is raised by arithinterp itself (an ``ArithInterpError`` whose raising frame is in
  the package; for the CLI, exit status 2 with a one-line message and no traceback; for HTTP,
  the status and the page);
- nothing was written or deleted: a snapshot (paths and content hashes) of the scratch
  directory every row's files live in is the same before and after;
- no forward pass ran: both backends' ``run`` and the functional engine are counted, zero.

Everything the rows read (tiny models, prompts, damaged directories, configs, a dashboard
report) is built once per module in the scratch directory, so the whole table runs in
seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import yaml
from transformers import AutoTokenizer
from typer.testing import CliRunner

import arithinterp
from arithinterp.errors import (
    ArithInterpError,
    ConfigError,
    MethodError,
    ModelLoadError,
    OutputError,
    ResourceError,
    ResultError,
    SiteError,
    TaskError,
    TokenizationError,
)
from arithinterp.methods import (
    LensResult,
    PatchingResult,
    attribution_patch,
    discover_circuit,
    edge_attribution_patch,
    evaluate,
    faithfulness,
    logit_lens,
    mediate,
    neuron_maps,
    patch_activations,
)
from arithinterp.methods.ablation import ablate, path_patch
from arithinterp.methods.registry import RunContext
from arithinterp.models import Site, load_model
from arithinterp.models.backends.nnsight_backend import NNsightBackend
from arithinterp.models.backends.tl import TransformerLensBackend
from arithinterp.models.functional import FunctionalTransformer
from arithinterp.pipeline.config import load_config, parse_config
from arithinterp.pipeline.runner import run_pipeline
from arithinterp.reports import AttributionReport
from arithinterp.results import Result
from arithinterp.tasks import PromptPairs, TaskSpec, generate, make_pairs, tokenize
from arithinterp.zoo.recipe import RECIPE_DIR, load_recipe
from arithinterp.zoo.train import train
from tests.conftest import build_tiny_hf

PACKAGE = Path(arithinterp.__file__).parent


# ---- the exceptions CLI and HTTP rows turn their outcome into -----------------------------------


class CliExit(Exception):
    """The CLI ended with a nonzero status (message: the output)."""


class HttpRefusal(Exception):
    """The dashboard answered with an error status (message: status and body)."""


class ErrorPanel(Exception):
    """The dashboard answered a callback with its error panel (message: the panel text)."""


# ---- the scratch directory and what lives in it ---------------------------------------------------


@dataclass
class Env:
    scratch: Path
    tl: Any
    nn: Any
    native: Any
    prompts: Any
    pairs: Any
    long_prompts: Any
    tokens: Any
    dash_app: Any
    dash_run: str
    report: AttributionReport


_HASHES: dict[tuple, str] = {}


def _content_hash(path: Path) -> str:
    """The file's SHA-256, computed again only when its inode, size or mtime changed."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _HASHES[key]


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash (directories and links marked)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = _content_hash(path)
    return found


def _user_files(folder: Path) -> Path:
    (folder / "data").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\chapter{Results}")
    (folder / "data" / "raw.csv").write_text("a,b\n1,2\n")
    return folder


def _edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _npy_shape(path: Path, shape: str) -> None:
    data = path.read_bytes()
    path.write_bytes(re.sub(rb"'shape': \([^)]*\)", f"'shape': {shape}".encode(), data, count=1))


TAMPERED: dict[str, Callable[[Path], None]] = {
    "result_not_json": lambda d: (d / "result.json").write_text("{not json"),
    "result_extras_int": lambda d: _edit_json(d / "result.json", lambda h: {**h, "extras": 3}),
    "result_fields_list": lambda d: _edit_json(d / "result.json", lambda h: {**h, "fields": [1]}),
    "result_class_list": lambda d: _edit_json(d / "result.json", lambda h: {**h, "class": [1]}),
    "result_future_version": lambda d: _edit_json(d / "result.json", lambda h: {**h, "format_version": 99}),
    "result_unknown_field": lambda d: _edit_json(d / "result.json", lambda h: {**h, "fields": {"bogus": 1}}),
    "result_foreign_module": lambda d: _edit_json(d / "result.json",
                                                  lambda h: {**h, "class": "PosixPath", "module": "pathlib"}),
    "result_not_utf8": lambda d: (d / "result.json").write_bytes(b"\xff\xfe{}"),
    "meta_not_utf8": lambda d: (d / "meta.json").write_bytes(b"\xff\xfe\x00{"),
    "meta_unknown_key": lambda d: _edit_json(d / "meta.json", lambda m: {**m, "bogus": 1}),
    "coords_bad_dtype": lambda d: _edit_json(
        d / "coords.json",
        lambda c: {**c, "coords": {k: {**v, "dtype": "bogus"} for k, v in c["coords"].items()}}),
    "coords_object_dtype": lambda d: _edit_json(
        d / "coords.json",
        lambda c: {**c, "coords": {k: {**v, "dtype": "O"} for k, v in c["coords"].items()}}),
    "coords_values_not_list": lambda d: _edit_json(
        d / "coords.json",
        lambda c: {**c, "coords": {k: {**v, "values": 7} for k, v in c["coords"].items()}}),
    "coords_not_object": lambda d: (d / "coords.json").write_text("[]"),
    "coords_wrong_dims": lambda d: _edit_json(d / "coords.json", lambda c: {**c, "dims": ["layer"]}),
    "npy_absurd_shape": lambda d: _npy_shape(d / "values.npy", "(100000000000, 100000)"),
    "npy_truncated": lambda d: (d / "values.npy").write_bytes((d / "values.npy").read_bytes()[:-8]),
    "npy_garbage": lambda d: (d / "values.npy").write_bytes(b"\x93NUMPY\x01\x00garbage"),
    "npy_pickled": lambda d: np.save(d / "values.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True),
    "npy_missing": lambda d: (d / "values.npy").unlink(),
    "extras_escape": lambda d: _edit_json(d / "result.json", lambda h: {**h, "extras": ["../../x"]}),
}


def _mini_report(folder: Path) -> Path:
    """A report directory as the report step lays it out, with one saved result (the logit lens)."""
    LensResult.example().save(folder / "results" / "logit_lens")
    (folder / "summary.json").write_text(json.dumps({"model": "tiny", "results": {"logit_lens": "results/logit_lens"}}))
    pd.DataFrame([{"component": "L0H0", "kind": "head", "layer": 0, "head": 0, "rank": 1}]).to_parquet(
        folder / "heads.parquet")
    pd.DataFrame([{"component": "L0N0", "kind": "neuron", "layer": 0, "neuron": 0, "rank": 1}]).to_parquet(
        folder / "neurons.parquet")
    pd.DataFrame({"prompt": ["1+1="]}).to_parquet(folder / "prompts.parquet")
    (folder / "report.html").write_text("<html></html>")
    return folder


def _write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _pipeline(**changes: Any) -> dict:
    base = {"name": "bad", "model": "zoo:add-5d",
            "task": {"operation": "add", "digits": 2, "format": "fixed", "n": 8},
            "steps": [{"kind": "evaluate"}]}
    return {**base, **changes}


def _damaged_run(root: Path, report_dir: Path) -> Path:
    """``root/runs/resume/``: a complete ``report`` step (fingerprint matching) whose
    heads.parquet is damaged, as a resumed run finds it."""
    cfg = parse_config(_pipeline(name="resume", steps=[{"kind": "report", "n": 8}]))
    run = root / "runs" / "resume"
    shutil.copytree(report_dir, run / "report")
    (run / "report" / "heads.parquet").write_bytes(b"PAR1 damaged")
    (run / "report" / "step.json").write_text(json.dumps(
        {"step": "report", "kind": "report", "fingerprint": cfg.fingerprint(0),
         "parts": {"": "AttributionReport"}}))
    # as the runner writes it, so that a resumed run finds it unchanged
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False))
    _write_yaml(root / "resume.yaml", cfg.model_dump(mode="json", exclude_none=True))
    return run


def _dashboard_dirs(root: Path, report_dir: Path) -> None:
    shutil.copytree(report_dir, root / "dash" / "good" / "report")
    shutil.copytree(report_dir, root / "dash_damaged" / "broken" / "report")
    for values in (root / "dash_damaged" / "broken" / "report" / "results").rglob("values.npy"):
        _npy_shape(values, "(100000000000,)")
    shutil.copytree(report_dir, root / "elsewhere" / "report")
    (root / "dash_symlink" / "run1").mkdir(parents=True)
    (root / "dash_symlink" / "run1" / "report").symlink_to(root / "elsewhere" / "report")
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("no report here")


def _model_dirs(root: Path, tiny: Path) -> None:
    pickled = root / "models" / "pickled"
    shutil.copytree(tiny, pickled)
    os.replace(pickled / "model.safetensors", pickled / "pytorch_model.bin")  # bytes do not matter
    (pickled / "adapter.safetensors").write_bytes(b"")
    negative = root / "models" / "negative_layers"
    shutil.copytree(tiny, negative)
    _edit_json(negative / "config.json", lambda c: {**c, "n_layer": -1})
    untokenized = root / "models" / "no_tokenizer"
    untokenized.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny / name, untokenized / name)
    broken = root / "models" / "broken_config"
    shutil.copytree(tiny, broken)
    (broken / "config.json").write_text("{not json")
    (root / "models" / "no_config").mkdir()
    (root / "models" / "no_config" / "model.safetensors").write_bytes(b"")


#: Recipes with an impossible combination: (file, shipped recipe, top-level or task changes).
_BAD_RECIPES = {
    "aux_on_add": ("add-5d", {"aux_loss": {"weight": 1.0}}),
    "answer_order_on_add": ("add-5d", {"task": {"kind": "add", "n_digits": 5, "answer_order": "msd"}}),
    "enrichment_on_mul": ("mul-3d", {"enrichment": {"batch_fraction": 0.5, "pair_fraction": 0.4}}),
}


def _recipes(root: Path) -> None:
    (root / "recipes").mkdir()
    for name, (base, changes) in _BAD_RECIPES.items():
        recipe = {**yaml.safe_load((RECIPE_DIR / f"{base}.yaml").read_text()), **changes}
        _write_yaml(root / "recipes" / f"{name}.yaml", recipe)


def _files(root: Path) -> None:
    _recipes(root)
    _user_files(root / "user")
    (root / "a_file").write_text("not a directory")
    _write_yaml(root / "ok.yaml", _pipeline())
    (root / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1") + b"\xff\xfe")
    (root / "python_tag.yaml").write_text("name: !!python/object/apply:os.system ['true']\n")
    (root / "list.yaml").write_text("- name: x\n")
    _user_files(root / "occupied" / "bad")
    (root / "locked" / "bad").mkdir(parents=True)
    (root / "locked" / "bad" / "config.yaml").write_text("name: bad\n")
    (root / "locked" / "bad" / ".lock").write_text(str(os.getppid()))  # a live process


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    scratch = tmp_path_factory.mktemp("bad_inputs")
    report_dir = _mini_report(tmp_path_factory.mktemp("report") / "report")
    tiny = build_tiny_hf(tmp_path_factory.mktemp("tiny") / "gpt2", "gpt2")
    tl = load_model(str(tiny), "transformer_lens")
    nn = load_model(str(tiny), "nnsight")
    native = load_model({"n_layers": 1, "d_model": 16, "n_ctx": 8, "d_head": 4, "n_heads": 4,
                         "d_vocab": 20, "act_fn": "relu", "normalization_type": "LN"},
                        tokenizer=AutoTokenizer.from_pretrained(tiny))
    spec = TaskSpec(operation="add", digits=2, format="fixed", n=8)
    prompts = generate(spec)
    pairs = make_pairs(prompts, "operand_a")
    long_prompts = generate(TaskSpec(operation="add", digits=14, format="fixed", n=4))
    result = PatchingResult.example()
    result.save(scratch / "result")
    LensResult.example().save(scratch / "lens_result")
    for name, tamper in TAMPERED.items():
        shutil.copytree(scratch / "result", scratch / "tampered" / name)
        tamper(scratch / "tampered" / name)
    _damaged_run(scratch, report_dir)
    _dashboard_dirs(scratch, report_dir)
    _model_dirs(scratch, tiny)
    _files(scratch)
    from arithinterp.dashboard import create_app

    return Env(scratch=scratch, tl=tl, nn=nn, native=native, prompts=prompts, pairs=pairs,
               long_prompts=long_prompts, tokens=tokenize(prompts, tl.tokenizer).tokens,
               dash_app=create_app(scratch / "dash_damaged"), dash_run="broken",
               report=AttributionReport.load(report_dir))


@pytest.fixture
def forwards(monkeypatch) -> list[str]:
    """Every forward pass started during the test, on either backend or the functional engine."""
    calls: list[str] = []

    def counted(owner: type, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(self, *args, **kwargs):
            calls.append(f"{owner.__name__}.{name}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    counted(TransformerLensBackend, "run")
    counted(NNsightBackend, "run")
    counted(FunctionalTransformer, "embed")
    return calls


# ---- how rows reach the CLI and the dashboard ------------------------------------------------------


def cli(*argv: str) -> Callable[[Env], None]:
    """Run ``arithinterp <argv>`` in-process (``{s}`` in an argument is the scratch directory)."""

    def call(env: Env) -> None:
        from arithinterp.pipeline.cli import app

        args = [a.format(s=env.scratch) for a in argv]
        res = CliRunner().invoke(app, args)
        if res.exception is not None and not isinstance(res.exception, SystemExit):
            raise res.exception  # a raw exception escaped the CLI: the row fails with it
        assert "Traceback" not in res.output
        if res.exit_code != 0:
            raise CliExit(f"exit {res.exit_code}: {' '.join(res.output.split())}")

    return call


def http(path: str, host: str) -> Callable[[Env], None]:
    def call(env: Env) -> None:
        res = env.dash_app.server.test_client().get(path, headers={"Host": host})
        if res.status_code >= 400:
            raise HttpRefusal(f"HTTP {res.status_code}: {res.get_data(as_text=True)}")

    return call


def callback(output: str, inputs: dict[str, tuple[str, Any]]) -> Callable[[Env], None]:
    """POST one Dash callback (``inputs``: id -> (property, value)); an error panel in the
    answer is raised as :class:`ErrorPanel`."""

    def call(env: Env) -> None:
        values = {cid: (prop, env.dash_run if value == "<run>" else value)
                  for cid, (prop, value) in inputs.items()}
        payload = {
            "output": output,
            "outputs": {"id": output.split(".")[0], "property": output.split(".")[1]},
            "inputs": [{"id": cid, "property": prop, "value": value} for cid, (prop, value) in values.items()],
            "changedPropIds": [f"{cid}.{prop}" for cid, (prop, _) in values.items()],
            "state": [],
        }
        res = env.dash_app.server.test_client().post("/_dash-update-component", json=payload,
                                                     headers={"Host": "127.0.0.1:8050"})
        if res.status_code >= 400:
            raise HttpRefusal(f"HTTP {res.status_code}: {res.get_data(as_text=True)}")
        text = " ".join(_strings(res.get_json()))
        if "error:" in text or "is not a component label" in text:
            raise ErrorPanel(text)

    return call


def _strings(node: Any) -> list[str]:
    """Every string in a JSON answer (the text of the panel Dash sends back)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def pipeline(data: dict, *, runs_dir: str = "{s}/runs", memory: int | None = None) -> Callable[[Env], None]:
    """Run a pipeline into ``runs_dir``; ``memory``: the bytes the machine reports available."""

    def call(env: Env) -> None:
        runs = runs_dir.format(s=env.scratch)
        with contextlib.ExitStack() as stack:
            if memory is not None:
                stack.enter_context(mock.patch("arithinterp.pipeline.limits.available_memory",
                                               return_value=memory))
            run_pipeline(parse_config(data), runs_dir=runs, progress=False, log=lambda _: None)

    return call


def tampered(name: str, cls: type[Result] = Result) -> Callable[[Env], None]:
    return lambda env: cls.load(env.scratch / "tampered" / name)


# ---- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    run: Callable[[Env], Any]
    error: type[BaseException]
    match: str


def _wrong_shape_metric(logits, clean, corrupt):
    return logits.sum()  # one number for the whole batch instead of one per pair


_LONG_CFG = _pipeline(task={"operation": "add", "digits": 18, "format": "fixed", "n": 8})

ROWS: list[Row] = [
    # -- saving never deletes a user's files ---------------------------------------------------------
    Row("save_onto_user_dir", lambda e: PatchingResult.example().save(e.scratch / "user"),
        OutputError, "is not empty (2 entries: data, thesis.tex)"),
    Row("save_onto_user_subdir", lambda e: PatchingResult.example().save(e.scratch / "user" / "data"),
        OutputError, "raw.csv"),
    Row("save_onto_file", lambda e: PatchingResult.example().save(e.scratch / "a_file"),
        OutputError, "not a directory"),
    Row("save_onto_run_dir_of_user", lambda e: LensResult.example().save(e.scratch / "occupied" / "bad"),
        OutputError, "overwrite=True"),
    Row("report_save_onto_user_dir", lambda e: e.report.save(e.scratch / "user"),
        OutputError, "would delete its contents"),
    Row("report_save_onto_file", lambda e: e.report.save(e.scratch / "a_file"),
        OutputError, "not a directory"),
    # -- tampered result directories ----------------------------------------------------------------
    Row("load_missing_dir", lambda e: Result.load(e.scratch / "nowhere"), ResultError, "no result directory"),
    Row("load_user_dir", lambda e: Result.load(e.scratch / "user"), ResultError, "missing result.json"),
    Row("load_wrong_class", lambda e: PatchingResult.load(e.scratch / "lens_result"),
        ResultError, "holds a LensResult, not a PatchingResult"),
    Row("result_not_json", tampered("result_not_json"), ResultError, "result.json is not valid JSON"),
    Row("result_extras_int", tampered("result_extras_int"), ResultError, "'extras' must be a list"),
    Row("result_fields_list", tampered("result_fields_list"), ResultError, "'fields' an object"),
    Row("result_class_list", tampered("result_class_list"), ResultError, "not an arithinterp result header"),
    Row("result_future_version", tampered("result_future_version"), ResultError, "upgrade arithinterp"),
    Row("result_unknown_field", tampered("result_unknown_field"), ResultError, "does not fit PatchingResult"),
    Row("result_foreign_module", tampered("result_foreign_module"), ResultError, "unknown result class 'PosixPath'"),
    Row("result_not_utf8", tampered("result_not_utf8"), ResultError, "result.json is not UTF-8"),
    Row("meta_not_utf8", tampered("meta_not_utf8"), ResultError, "meta.json is not UTF-8"),
    Row("meta_unknown_key", tampered("meta_unknown_key"), ResultError, "unknown result meta keys ['bogus']"),
    Row("coords_bad_dtype", tampered("coords_bad_dtype"), ResultError, "coords.json: coordinate"),
    Row("coords_object_dtype", tampered("coords_object_dtype"), ResultError, "use numbers, bools or str"),
    Row("coords_values_not_list", tampered("coords_values_not_list"), ResultError, "'values' must be a list"),
    Row("coords_not_object", tampered("coords_not_object"), ResultError, "must hold a JSON object"),
    Row("coords_wrong_dims", tampered("coords_wrong_dims"), ResultError, "declares dims ['layer']"),
    Row("npy_absurd_shape", tampered("npy_absurd_shape"), ResultError, "values.npy declares shape"),
    Row("npy_truncated", tampered("npy_truncated"), ResultError, "the file is damaged"),
    Row("npy_garbage", tampered("npy_garbage"), ResultError, "is not a valid .npy file"),
    Row("npy_pickled", tampered("npy_pickled"), ResultError, "holds dtype object"),
    Row("npy_missing", tampered("npy_missing"), ResultError, "missing values.npy"),
    Row("extras_escape", tampered("extras_escape"), ResultError, "invalid extra name '../../x'"),
    Row("typed_load_of_damaged", tampered("npy_absurd_shape", PatchingResult), ResultError, "declares shape"),
    Row("report_load_user_dir", lambda e: AttributionReport.load(e.scratch / "user"),
        ResultError, "not a complete report directory"),
    Row("report_load_damaged_parquet", lambda e: AttributionReport.load(e.scratch / "runs" / "resume" / "report"),
        ResultError, "heads.parquet cannot be read as Parquet"),
    # -- task specs -----------------------------------------------------------------------------------
    Row("task_n_huge", lambda e: TaskSpec(n=1_000_000_000), TaskError, "at most 1_000_000, got 1_000_000_000"),
    Row("task_n_zero", lambda e: TaskSpec(n=0), TaskError, "n (number of prompts)"),
    Row("task_few_shot_huge", lambda e: TaskSpec(few_shot=10**6), TaskError, "few_shot must be 0..64"),
    Row("task_seed_negative", lambda e: TaskSpec(seed=-1), TaskError, "seed must be a non-negative integer up to 2**32-1"),
    Row("task_seed_huge", lambda e: TaskSpec(seed=2**70), TaskError, "seed must be a non-negative integer up to 2**32-1"),
    Row("task_digits_19", lambda e: TaskSpec(digits=19), TaskError, "digits must be a width 1..18"),
    Row("task_bad_operation", lambda e: TaskSpec(operation="pow"), TaskError, "operation"),
    Row("task_parse_list", lambda e: TaskSpec.parse([1, 2]), TaskError, "must be a TaskSpec or a mapping"),
    Row("task_n_string", lambda e: TaskSpec(n="many"), TaskError, "n"),
    Row("generate_non_spec", lambda e: generate(["add"]), TaskError, "TaskSpec"),
    Row("generate_model_without_task", lambda e: generate(model=e.tl), TaskError,
        "has no default task (only zoo models"),
    Row("generate_nothing", lambda e: generate(), TaskError, "generate needs a task"),
    Row("run_context_model_without_task", lambda e: RunContext(model=e.tl), ConfigError,
        "pass spec= (a TaskSpec) or prompts="),
    Row("pairs_bad_kind", lambda e: make_pairs(e.prompts, "bogus"), TaskError, "bogus"),
    Row("pairs_mismatched", lambda e: PromptPairs(clean=e.prompts, corrupt=e.prompts[:3], kind="operand_a"),
        TaskError, "8 clean but 3 corrupt prompts"),
    Row("pairs_not_promptsets", lambda e: PromptPairs(clean=["1+1="], corrupt=["1+2="], kind="operand_a"),
        TaskError, "PromptSet"),
    # -- prompts longer than the model's context ------------------------------------------------------
    Row("context_evaluate_tl", lambda e: evaluate(e.tl, e.long_prompts, progress=False),
        TokenizationError, "the model's context holds 32 positions"),
    Row("context_evaluate_nnsight", lambda e: evaluate(e.nn, e.long_prompts, progress=False),
        TokenizationError, "the model's context holds 32 positions"),
    Row("context_logit_lens", lambda e: logit_lens(e.tl, e.long_prompts, progress=False),
        TokenizationError, "prompt plus answer is"),
    Row("context_patching", lambda e: patch_activations(e.tl, make_pairs(e.long_prompts, "operand_a"),
                                                        progress=False),
        TokenizationError, "context holds 32"),
    Row("context_native_model", lambda e: evaluate(e.native, e.prompts, progress=False),
        TokenizationError, "context holds 8"),
    Row("context_few_shot", lambda e: evaluate(e.tl, generate(TaskSpec(digits=2, format="fixed", n=4,
                                                                        few_shot=5, few_shot_separator="%")),
                                                 progress=False),
        TokenizationError, "few_shot=5"),
    Row("tokenize_list", lambda e: tokenize(["1+1="], e.tl.tokenizer), TaskError, "PromptSet"),
    # -- models -----------------------------------------------------------------------------------------
    Row("model_spec_int", lambda e: load_model(123), ModelLoadError, "a model spec is"),
    Row("model_spec_none", lambda e: load_model(None), ModelLoadError, "a model spec is"),
    Row("model_zoo_unknown", lambda e: load_model("zoo:nosuch"), ModelLoadError, "no zoo model 'nosuch'"),
    Row("model_missing_dir", lambda e: load_model(str(e.scratch / "nowhere")), ModelLoadError, "no model directory"),
    Row("model_is_file", lambda e: load_model(str(e.scratch / "a_file")), ModelLoadError, "is a file"),
    Row("model_no_config", lambda e: load_model(str(e.scratch / "models" / "no_config")),
        ModelLoadError, "has no config.json"),
    Row("model_pickled_tl", lambda e: load_model(str(e.scratch / "models" / "pickled")),
        ModelLoadError, "pickled weights (pytorch_model.bin)"),
    Row("model_pickled_nnsight", lambda e: load_model(str(e.scratch / "models" / "pickled"), "nnsight"),
        ModelLoadError, "adapter.safetensors) are not the model's weights"),
    Row("model_negative_layers", lambda e: load_model(str(e.scratch / "models" / "negative_layers")),
        ModelLoadError, "n_layer must be a positive integer, got -1"),
    Row("model_no_tokenizer", lambda e: load_model(str(e.scratch / "models" / "no_tokenizer"), "nnsight"),
        ModelLoadError, "has no tokenizer"),
    Row("model_broken_config", lambda e: load_model(str(e.scratch / "models" / "broken_config")),
        ModelLoadError, "config.json is not valid UTF-8 JSON"),
    Row("model_hub_offline", lambda e: load_model("someone/no-such-model"),
        ModelLoadError, "HF_HUB_OFFLINE is set"),
    Row("model_bad_backend", lambda e: load_model("zoo:add-5d", "jax"), ModelLoadError, "unknown backend 'jax'"),
    Row("model_bad_dtype", lambda e: load_model("zoo:add-5d", dtype="int8"), ModelLoadError, "unknown dtype"),
    Row("model_remote_tl", lambda e: load_model("zoo:add-5d", remote=True), ModelLoadError, "needs backend='nnsight'"),
    Row("model_dict_nnsight", lambda e: load_model({"n_layers": 1}, "nnsight"), ModelLoadError, "config dict"),
    Row("model_dict_negative", lambda e: load_model({"n_layers": -1, "d_model": 8, "n_ctx": 8, "d_head": 4,
                                                     "n_heads": 2, "d_vocab": 20, "act_fn": "relu"}),
        ModelLoadError, "n_layers"),
    Row("model_dict_bad_value", lambda e: load_model({"n_layers": 1, "d_model": "wide", "n_ctx": 8,
                                                      "d_head": 4, "n_heads": 2, "d_vocab": 20}),
        ModelLoadError, "d_model"),
    # -- sites ------------------------------------------------------------------------------------------
    Row("site_layer_str", lambda e: Site("attn_head", layer="0"), SiteError, "Site.layer must be an int or None, got '0'"),
    Row("site_layer_float", lambda e: Site("attn_head", layer=1.5), SiteError, "got 1.5 (float)"),
    Row("site_layer_bool", lambda e: Site("resid_pre", layer=True), SiteError, "Site.layer must be an int"),
    Row("site_head_str", lambda e: Site("attn_head", layer=0, head="1"), SiteError, "Site.head must be an int"),
    Row("site_kind_unknown", lambda e: Site("bogus", layer=0), SiteError, "unknown site kind 'bogus'"),
    Row("site_kind_not_str", lambda e: Site(3), SiteError, "Site kind must be a str"),
    Row("site_layerless_with_layer", lambda e: Site("embed", layer=0), SiteError, "takes no layer"),
    Row("site_missing_layer", lambda e: Site("attn_head"), SiteError, "needs a layer"),
    Row("site_head_on_resid", lambda e: Site("resid_pre", 0, head=1), SiteError, "takes no head"),
    Row("site_hook_name_label", lambda e: Site.from_label("blocks.0.attn.hook_z"), SiteError, "is not a site label"),
    Row("site_hook_name_ablate", lambda e: ablate(e.tl, e.tokens, "blocks.0.attn.hook_z", kind="zero"),
        SiteError, "write Site('attn_head', layer=0"),
    Row("site_hook_name_cache", lambda e: e.tl.run_with_cache(e.tokens, ["blocks.1.hook_resid_pre"]),
        SiteError, "write Site('resid_pre', layer=1"),
    Row("site_hook_name_nnsight", lambda e: e.nn.run_with_cache(e.tokens, ["blocks.0.mlp.hook_post"]),
        SiteError, "TransformerLens hook name"),
    Row("site_tuple_cache", lambda e: e.tl.run_with_cache(e.tokens, [("attn_head", 0)]),
        SiteError, "expected a Site"),
    Row("site_out_of_range", lambda e: e.tl.run_with_cache(e.tokens, [Site("attn_head", 5)]),
        SiteError, "layer 5 is out of range"),
    Row("site_head_out_of_range_nnsight", lambda e: e.nn.run_with_patches(e.tokens, {Site("attn_head", 0, head=9): 0.0}),
        SiteError, "head 9 is out of range"),
    # -- method options and inputs ----------------------------------------------------------------------
    Row("evaluate_batch_size_zero", lambda e: evaluate(e.tl, e.prompts, batch_size=0, progress=False),
        MethodError, "batch_size must be"),
    Row("evaluate_batch_size_zero_nnsight", lambda e: evaluate(e.nn, e.prompts, batch_size=0, progress=False),
        MethodError, "batch_size must be"),
    Row("evaluate_list", lambda e: evaluate(e.tl, list(e.prompts.prompts), progress=False), TaskError, "PromptSet"),
    Row("logit_lens_batch_size_zero", lambda e: logit_lens(e.tl, e.prompts, batch_size=0, progress=False),
        MethodError, "batch_size must be"),
    Row("patching_batch_size_zero", lambda e: patch_activations(e.tl, e.pairs, batch_size=0, progress=False),
        MethodError, "batch_size must be a positive int, got 0"),
    Row("patching_n_boot_zero", lambda e: patch_activations(e.tl, e.pairs, n_boot=0, progress=False),
        MethodError, "n_boot must be a positive int, got 0"),
    Row("patching_n_boot_zero_nnsight", lambda e: patch_activations(e.nn, e.pairs, n_boot=0, progress=False),
        MethodError, "n_boot must be a positive int"),
    Row("patching_unknown_metric", lambda e: patch_activations(e.tl, e.pairs, metric="nope", progress=False),
        MethodError, "unknown metric 'nope'"),
    Row("patching_metric_wrong_shape", lambda e: patch_activations(e.tl, e.pairs, metric=_wrong_shape_metric,
                                                                   progress=False),
        MethodError, "one value per pair"),
    Row("patching_metric_wrong_shape_nnsight",
        lambda e: patch_activations(e.nn, e.pairs, metric=_wrong_shape_metric, progress=False),
        MethodError, "one value per pair"),
    Row("patching_direction", lambda e: patch_activations(e.tl, e.pairs, direction="sideways", progress=False),
        MethodError, "direction must be 'denoise' or 'noise'"),
    Row("patching_answer_mode", lambda e: patch_activations(e.tl, e.pairs, answer="many", progress=False),
        MethodError, "answer must be one of"),
    Row("patching_promptset", lambda e: patch_activations(e.tl, e.prompts, progress=False),
        MethodError, "pairs must be PromptPairs"),
    Row("patching_list", lambda e: patch_activations(e.tl, [e.pairs], progress=False),
        MethodError, "got list"),
    Row("attribution_n_boot_zero", lambda e: attribution_patch(e.tl, e.pairs, n_boot=0, progress=False),
        MethodError, "n_boot must be a positive int"),
    Row("attribution_batch_size_zero", lambda e: attribution_patch(e.tl, e.pairs, batch_size=0, progress=False),
        MethodError, "batch_size must be a positive int"),
    Row("faithfulness_n_boot_zero", lambda e: faithfulness(e.tl, [Site("attn_head", 0)], e.prompts, n_boot=0,
                                                            answer="multi"),
        MethodError, "n_boot must be an int >= 1, got 0"),
    Row("circuit_batch_size_zero", lambda e: discover_circuit(e.tl, e.pairs, batch_size=0, progress=False),
        MethodError, "batch_size must be an int >= 1, got 0"),
    Row("path_patch_n_boot_zero", lambda e: path_patch(e.tl, e.pairs, [Site("attn_head", 0)], [Site("mlp_post", 1)],
                                                       n_boot=0, progress=False),
        MethodError, "n_boot must be a positive int"),
    Row("edge_attribution_n_boot_zero", lambda e: edge_attribution_patch(e.tl, e.pairs, n_boot=0, progress=False),
        MethodError, "n_boot must be a positive int"),
    Row("logit_lens_k_str", lambda e: logit_lens(e.tl, e.prompts, k="5", progress=False),
        MethodError, "k must be an int >= 1, got '5'"),
    Row("evaluate_batch_size_str", lambda e: evaluate(e.tl, e.prompts, batch_size="8", progress=False),
        MethodError, "batch_size must be an int >= 1, got '8'"),
    Row("neuron_maps_promptset", lambda e: neuron_maps(e.tl, e.prompts, layer=0), MethodError,
        "takes the task's TaskSpec"),
    Row("mediate_n_boot_zero", lambda e: mediate(e.tl, e.pairs, n_boot=0, progress=False),
        MethodError, "n_boot must be a positive int"),
    # -- pipeline configs ---------------------------------------------------------------------------------
    Row("config_not_mapping", lambda e: parse_config([1]), ConfigError, "must hold a mapping"),
    Row("config_unknown_step", lambda e: parse_config(_pipeline(steps=[{"kind": "nosuch"}])),
        ConfigError, "valid kinds"),
    Row("config_step_option_type", lambda e: parse_config(_pipeline(steps=[{"kind": "logit_lens", "k": "five"}])),
        ConfigError, "steps[0].k"),
    Row("config_seed_negative", lambda e: parse_config(_pipeline(seed=-1)), ConfigError, "seed"),
    Row("config_seed_huge", lambda e: parse_config(_pipeline(seed=2**70)), ConfigError, "less than or equal to 4294967295"),
    Row("config_pairs_seed_negative", lambda e: parse_config(_pipeline(pairs={"seed": -5})), ConfigError, "pairs.seed"),
    Row("config_task_n_huge", lambda e: parse_config(_pipeline(task={"n": 10**9})), ConfigError, "at most 1_000_000"),
    Row("config_report_n_huge", lambda e: parse_config(_pipeline(steps=[{"kind": "report", "n": 10**9}])),
        ConfigError, "steps[0].n"),
    Row("config_few_shot_huge", lambda e: parse_config(_pipeline(task={"few_shot": 1000})), ConfigError, "few_shot"),
    Row("config_override_unclosed", lambda e: parse_config(_pipeline(), overrides=["task.n=[unclosed"]),
        ConfigError, "not valid YAML"),
    Row("config_override_no_equals", lambda e: parse_config(_pipeline(), overrides=["task.n"]),
        ConfigError, "must look like key=value"),
    Row("config_no_task_hub_model", lambda e: parse_config({"name": "bad", "model": "gpt2",
                                                            "steps": [{"kind": "evaluate"}]}),
        ConfigError, "task: no `task:` is given, but model 'gpt2' has none"),
    Row("config_default_task_unknown_zoo", lambda e: parse_config({"name": "bad", "model": "zoo:nosuch",
                                                                   "task": "default", "steps": [{"kind": "evaluate"}]}),
        ConfigError, "model: no zoo model 'nosuch'"),
    Row("config_missing_file", lambda e: load_config(e.scratch / "nowhere.yaml"), ConfigError, "no pipeline config"),
    Row("config_not_utf8", lambda e: load_config(e.scratch / "latin1.yaml"), ConfigError, "is not UTF-8 text"),
    Row("config_python_tag", lambda e: load_config(e.scratch / "python_tag.yaml"), ConfigError, "not valid YAML"),
    # -- training recipes and where training writes -------------------------------------------------------
    Row("recipe_aux_loss_on_add", lambda e: load_recipe(e.scratch / "recipes" / "aux_on_add.yaml"), ConfigError,
        "aux_loss regresses multiplication's running sums"),
    Row("recipe_answer_order_on_add", lambda e: load_recipe(e.scratch / "recipes" / "answer_order_on_add.yaml"),
        ConfigError, "task.answer_order is a choice of kind 'mul' only"),
    Row("recipe_enrichment_on_mul", lambda e: load_recipe(e.scratch / "recipes" / "enrichment_on_mul.yaml"),
        ConfigError, "enrichment applies to digit addition and subtraction only"),
    Row("train_impossible_recipe", lambda e: train(e.scratch / "recipes" / "enrichment_on_mul.yaml",
                                                   e.scratch / "trained", progress=False),
        ConfigError, "enrichment"),
    Row("train_onto_user_dir", lambda e: train("add-5d", e.scratch / "user", progress=False), ConfigError,
        "user exists and is not a zoo model or training directory"),
    # -- running a pipeline ---------------------------------------------------------------------------------
    Row("pipeline_unknown_zoo_model", pipeline(_pipeline(model="zoo:nosuch")), ModelLoadError, "model: no zoo model"),
    Row("pipeline_context_too_long", pipeline(_LONG_CFG), TokenizationError,
        "task: prompt plus answer is 57 tokens but the model's context holds 32 positions"),
    Row("pipeline_memory_estimate", pipeline(_pipeline(task={"digits": 2, "format": "fixed", "n": 100_000}),
                                             memory=2**30),
        ResourceError, "task: a task of 100_000 prompts on zoo:add-5d needs an estimated 6.88 GiB of memory but 1.00 GiB"),
    Row("pipeline_memory_estimate_report_n", pipeline(_pipeline(steps=[{"kind": "report", "n": 100_000}]),
                                                      memory=2**30),
        ResourceError, "a task of 100_000 prompts"),
    Row("pipeline_runs_dir_is_file", pipeline(_pipeline(), runs_dir="{s}/a_file"), OutputError,
        "a_file exists and is not a directory"),
    Row("pipeline_runs_dir_unwritable", pipeline(_pipeline(), runs_dir="/proc/arithinterp-runs"), OutputError,
        "cannot create the run directory"),
    Row("pipeline_run_dir_occupied", pipeline(_pipeline(), runs_dir="{s}/occupied"), OutputError,
        "holds files that are not a pipeline run (data, thesis.tex)"),
    Row("pipeline_run_dir_locked", pipeline(_pipeline(), runs_dir="{s}/locked"), OutputError,
        "delete"),
    Row("pipeline_resume_damaged_report", pipeline(_pipeline(name="resume", steps=[{"kind": "report", "n": 8}])),
        ResultError, "rerun with --force"),
    # -- the command line -------------------------------------------------------------------------------------
    Row("cli_run_missing_config", cli("run", "{s}/nowhere.yaml"), CliExit, "error: no pipeline config"),
    Row("cli_run_unclosed_override", cli("run", "{s}/ok.yaml", "--set", "task.n=[unclosed"), CliExit,
        "the value is not valid YAML"),
    Row("cli_run_not_utf8", cli("run", "{s}/latin1.yaml"), CliExit, "is not UTF-8 text"),
    Row("cli_run_list_config", cli("run", "{s}/list.yaml"), CliExit, "must hold a mapping"),
    Row("cli_run_seed_huge", cli("run", "{s}/ok.yaml", "--set", f"seed={2**70}"), CliExit, "seed"),
    Row("cli_run_seed_negative", cli("run", "{s}/ok.yaml", "--set", "seed=-1"), CliExit, "seed"),
    Row("cli_run_runs_dir_file", cli("run", "{s}/ok.yaml", "--runs-dir", "{s}/a_file"), CliExit,
        "exists and is not a directory"),
    Row("cli_run_resume_damaged", cli("run", "{s}/resume.yaml", "--runs-dir", "{s}/runs"), CliExit,
        "heads.parquet cannot be read as Parquet"),
    Row("cli_train_unknown", cli("train", "nosuch"), CliExit, "error: no recipe 'nosuch'"),
    Row("cli_train_seed_negative", cli("train", "add-5d", "--seed", "-1", "--out", "{s}/trained"), CliExit,
        "greater than or equal to 0"),
    Row("cli_train_zero_steps", cli("train", "add-5d", "--steps", "0", "--out", "{s}/trained"), CliExit,
        "greater than or equal to 1"),
    Row("cli_train_into_the_package", cli("train", "add-5d", "--out", str(PACKAGE / "zoo" / "models" / "add-5d")),
        CliExit, "is inside the package zoo"),
    Row("cli_train_into_package_and_out", cli("train", "add-5d", "--into-package", "--out", "{s}/trained"),
        CliExit, "give it or --out, not both"),
    Row("cli_train_onto_user_dir", cli("train", "add-5d", "--out", "{s}/user"), CliExit,
        "is not a zoo model or training directory"),
    Row("cli_train_impossible_recipe", cli("train", "{s}/recipes/aux_on_add.yaml", "--out", "{s}/trained"),
        CliExit, "aux_loss regresses multiplication's running sums"),
    Row("cli_zoo_path_unknown", cli("zoo", "path", "nosuch"), CliExit, "error: no zoo model 'nosuch'"),
    Row("cli_dashboard_port_high", cli("dashboard", "{s}/dash", "--port", "99999"), CliExit,
        "Invalid value for '--port'"),
    Row("cli_dashboard_port_zero", cli("dashboard", "{s}/dash", "--port", "0"), CliExit,
        "Invalid value for '--port'"),
    Row("cli_dashboard_missing", cli("dashboard", "{s}/nowhere"), CliExit, "does not exist"),
    Row("cli_dashboard_no_report", cli("dashboard", "{s}/not_a_run"), CliExit, "no report found"),
    Row("cli_dashboard_symlinked_report", cli("dashboard", "{s}/dash_symlink/run1"), CliExit,
        "points outside the run directory"),
    Row("cli_dashboard_runs_with_symlinked_report", cli("dashboard", "{s}/dash_symlink"), CliExit,
        "points outside the run directory"),
    # -- the dashboard over HTTP ------------------------------------------------------------------------------
    Row("http_foreign_host", http("/", "evil.example"), HttpRefusal, "HTTP 400"),
    Row("http_foreign_host_with_port", http("/", "evil.example:8050"), HttpRefusal, "Host header check"),
    Row("http_rebinding_subdomain", http("/_dash-layout", "127.0.0.1.evil.example"), HttpRefusal, "HTTP 400"),
    Row("http_empty_host", http("/", ""), HttpRefusal, "HTTP 400"),
    Row("http_damaged_result_panel",
        callback("detail.children", {"selected": ("data", "L0H0"), "run": ("value", "<run>")}),
        ErrorPanel, "values.npy declares shape"),
    Row("http_bad_component_label",
        callback("detail.children", {"selected": ("data", "../../etc/passwd"), "run": ("value", "<run>")}),
        ErrorPanel, "is not a component label"),
    Row("http_unknown_run", callback("detail.children", {"selected": ("data", "L0H0"), "run": ("value", "../x")}),
        ErrorPanel, "unknown run '../x'"),
]


def _raised_in_package(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE.resolve())


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, env: Env, forwards: list[str]) -> None:
    before = snapshot(env.scratch)
    with pytest.raises(BaseException) as info:
        row.run(env)
    err = info.value
    assert isinstance(err, row.error), f"{type(err).__name__}: {err}"
    assert row.match in str(err)
    if isinstance(err, ArithInterpError):
        assert _raised_in_package(err), traceback.format_exception(err)
    else:
        assert isinstance(err, (CliExit, HttpRefusal, ErrorPanel)), err
    assert snapshot(env.scratch) == before, "the row wrote or deleted files"
    assert forwards == [], f"forward passes ran: {forwards}"


def test_the_table_is_wide() -> None:
    """At least 80 rows, across every interface, with no id twice."""
    ids = [r.id for r in ROWS]
    assert len(ids) >= 80 and len(set(ids)) == len(ids)
    kinds = {r.error for r in ROWS}
    assert {CliExit, HttpRefusal, ErrorPanel, OutputError, ResultError, ConfigError} <= kinds


def test_the_guards_see_what_they_guard(env: Env, forwards: list[str]) -> None:
    """The checks above would notice a forward pass, a written file and a served page."""
    before = snapshot(env.scratch)
    evaluate(env.tl, env.prompts, progress=False)
    evaluate(env.nn, env.prompts, progress=False)
    assert "TransformerLensBackend.run" in forwards and "NNsightBackend.run" in forwards
    (env.scratch / "probe").write_text("x")
    try:
        assert snapshot(env.scratch) != before
    finally:
        (env.scratch / "probe").unlink()
    ok = env.dash_app.server.test_client().get("/", headers={"Host": "127.0.0.1:8050"})
    assert ok.status_code == 200
    assert env.dash_app.server.test_client().get("/", headers={"Host": "[::1]:8050"}).status_code == 200


def test_overwrite_and_our_own_directories_are_replaced(env: Env, tmp_path: Path) -> None:
    """What the refusals leave possible: replacing a result of ours, or anything on request."""
    target = _user_files(tmp_path / "mine")
    PatchingResult.example().save(target, overwrite=True)
    assert not (target / "thesis.tex").exists() and Result.load(target).metric
    LensResult.example().save(target)  # a result of ours: replaced without overwrite
    assert isinstance(Result.load(target), LensResult)


def test_hub_name_fails_fast_offline(env: Env) -> None:
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match="local directory"):
        load_model("someone/no-such-model")
    assert time.perf_counter() - started < 5


def test_stale_lock_is_taken_over(env: Env, tmp_path: Path) -> None:
    """A lock left by a process that no longer runs is replaced; a live one is not."""
    from arithinterp.pipeline.rundir import acquire_lock

    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("999999999")  # no such process
    lock = acquire_lock(run)
    assert lock.read_text() == str(os.getpid())
    with pytest.raises(OutputError, match="being written by process"):
        (run / ".lock").write_text(str(os.getppid()))
        acquire_lock(run)
