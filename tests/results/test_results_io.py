"""Atomic writers, JSON conversion and ResultMeta round trips."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import arithinterp.results.io as rio
from arithinterp.errors import OutputError, ResultError
from arithinterp.results import (
    ResultMeta,
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    stable_hash,
    to_jsonable,
)


class Op(enum.Enum):
    ADD = "+"


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_text_replaces_and_keeps_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "one")
    assert path.read_text() == "one"
    assert path.stat().st_mode & 0o777 == 0o644
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and listing(path.parent) == ["a.txt"]


def test_atomic_write_text_failure_keeps_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")

    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(rio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and listing(tmp_path) == ["a.txt"]


def test_atomic_dir_commits_on_success_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "step"
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and not target.exists()
        (tmp / "x").write_text("1")
    assert listing(target) == ["x"]
    with atomic_dir(target, overwrite=True) as tmp:  # "x" alone does not mark it as ours
        (tmp / "y").write_text("2")
    assert listing(target) == ["y"] and listing(tmp_path) == ["step"]


def test_atomic_dir_rolls_back_on_error(tmp_path: Path) -> None:
    target = tmp_path / "step"
    target.mkdir()
    (target / "keep").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "half").write_text("partial")
        raise RuntimeError("interrupted")
    assert listing(target) == ["keep"] and listing(tmp_path) == ["step"]


def test_atomic_dir_restores_old_dir_when_final_rename_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "step"
    target.mkdir()
    (target / "keep").write_text("old")
    real_replace = os.replace

    def fail_on_new(src, dst):
        if ".tmp-" in str(src):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(rio.os, "replace", fail_on_new)
    with pytest.raises(OSError, match="rename failed"), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new").write_text("1")
    assert listing(target) == ["keep"] and listing(tmp_path) == ["step"]


def test_atomic_dir_refuses_to_replace_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="not a directory"), atomic_dir(tmp_path / "f"):
        pass
    assert (tmp_path / "f").read_text() == "x"


def test_atomic_dir_keeps_a_foreign_nonempty_dir(tmp_path: Path) -> None:
    """Replacing a directory deletes it: a user's own files are refused, before the block
    runs, and only an empty directory, one of ours, or overwrite=True is replaced."""
    target = tmp_path / "thesis"
    (target / "data").mkdir(parents=True)
    (target / "thesis.tex").write_text("chapter 1")
    (target / "data" / "raw.csv").write_text("a,b")
    ran = []
    refused = pytest.raises(OutputError, match=r"not empty \(2 entries: data, thesis.tex\).*overwrite=True")
    with refused, atomic_dir(target):
        ran.append(1)
    assert not ran and sorted(listing(target)) == ["data", "thesis.tex"]
    assert listing(tmp_path) == ["thesis"]
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:
        (tmp / "result.json").write_text("{}")
        (tmp / "meta.json").write_text("{}")
    with atomic_dir(tmp_path / "empty") as tmp:  # now one of ours: replaced
        (tmp / "z").write_text("1")
    assert listing(tmp_path / "empty") == ["z"]


def test_to_jsonable_and_atomic_write_json(tmp_path: Path) -> None:
    @dataclasses.dataclass
    class Opts:
        k: int
        where: Path

    obj = {
        "a": np.float32(0.5),
        "b": (1, 2),
        "c": np.arange(3),
        "d": Op.ADD,
        "e": Opts(3, Path("x/y")),
        "f": float("nan"),
        "g": {3: {2}},
        "h": pd.DataFrame({"x": [1, 2]}),
    }
    want = {
        "a": 0.5,
        "b": [1, 2],
        "c": [0, 1, 2],
        "d": "+",
        "e": {"k": 3, "where": "x/y"},
        "f": None,
        "g": {"3": [2]},
        "h": [{"x": 1}, {"x": 2}],
    }
    assert to_jsonable(obj) == want
    atomic_write_json(tmp_path / "s.json", obj)
    assert json.loads((tmp_path / "s.json").read_text()) == want
    with pytest.raises(TypeError, match="object"):
        to_jsonable({"x": object()})


def test_meta_json_round_trip_and_normalisation() -> None:
    meta = ResultMeta(
        method="patch_activations",
        model="zoo/add3",
        backend="transformer_lens",
        dtype="float32",
        dataset_hash=stable_hash(["12+34=", "55+17="]),
        seed=np.int64(4),  # type: ignore[arg-type]
        options={"sites": ("resid_pre", "attn_head"), "op": Op.ADD},
        extra={"seconds": 1.25},
    )
    assert meta.options == {"sites": ["resid_pre", "attn_head"], "op": "+"}
    assert type(meta.seed) is int
    assert ResultMeta.from_json(meta.to_json()) == meta
    assert meta.package_version and meta.created.endswith("+00:00")


def test_meta_rejects_bad_input() -> None:
    with pytest.raises(ResultError, match="method"):
        ResultMeta(method="")
    with pytest.raises(ResultError, match="seed"):
        ResultMeta(method="m", seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ResultError, match="JSON"):
        ResultMeta(method="m", options={"f": object()})
    with pytest.raises(ResultError, match="unknown result meta keys"):
        ResultMeta.from_dict({"method": "m", "colour": "red"})
    with pytest.raises(ResultError, match="valid JSON"):
        ResultMeta.from_json("{")


def test_stable_hash_is_order_insensitive_for_keys_and_stable() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": (1, 2), "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    assert len(stable_hash("x")) == 16
