"""Unit tests of Result: validation, tidy frames, ranking, save/load and its failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import xarray as xr

import arithinterp.results.serialize as serialize
from arithinterp.errors import ArithInterpError, ResultError
from arithinterp.results import (
    AXES,
    EstimateTable,
    Result,
    ResultMeta,
    ScalarTable,
    result_class,
    resultclass,
)

META = ResultMeta(method="unit", model="tiny", backend="none", dtype="float32", seed=3)


def layer_pos(data=None, **coords) -> xr.DataArray:
    data = np.arange(6.0).reshape(2, 3) if data is None else data
    return xr.DataArray(
        data,
        dims=("layer", "pos"),
        coords={"layer": [0, 1], "pos": [0, 1, 2], "pos_token": ("pos", ["7", "+", "="]), **coords},
    )


@resultclass
class PatchingLike(Result):
    """A subclass with its own metric and plain-JSON fields, as a method would write."""

    metric_name: ClassVar[str] = "logit_diff_recovered"
    clean_logit_diff: float = 0.0
    notes: list = None  # type: ignore[assignment]


class OtherKind(Result):
    pass


# -- validation ---------------------------------------------------------------------------------


def test_dims_outside_the_vocabulary_are_rejected_with_the_valid_ones() -> None:
    bad = xr.DataArray(np.zeros((2, 2)), dims=("layer", "head_index"))
    with pytest.raises(ResultError) as err:
        Result(values=bad, meta=META)
    assert "head_index" in str(err.value) and "neuron" in str(err.value)
    assert isinstance(err.value, ArithInterpError)


def test_values_must_be_a_dataarray_and_meta_a_resultmeta() -> None:
    with pytest.raises(ResultError, match="DataArray"):
        Result(values=np.zeros(3), meta=META)  # type: ignore[arg-type]
    with pytest.raises(ResultError, match="ResultMeta"):
        Result(values=layer_pos(), meta="unit")  # type: ignore[arg-type]
    assert Result(values=layer_pos(), meta=META.to_dict()).meta == META


def test_extras_must_share_dims_and_labels() -> None:
    values = layer_pos()
    with pytest.raises(ResultError, match="dims"):
        Result(values=values, meta=META, extras={"x": xr.DataArray(np.zeros(4), dims="head")})
    shifted = values.assign_coords(pos=[1, 2, 3])
    with pytest.raises(ResultError, match="labels"):
        Result(values=values, meta=META, extras={"x": shifted})
    with pytest.raises(ResultError, match="identifier"):
        Result(values=values, meta=META, extras={"../x": values})


def test_column_names_may_not_clash() -> None:
    with pytest.raises(ResultError, match="value"):
        Result(values=layer_pos(), meta=META, extras={"value": layer_pos()})


def test_results_are_frozen_and_extras_read_only() -> None:
    res = Result(values=layer_pos(), meta=META, extras={"low": layer_pos() - 1})
    with pytest.raises(TypeError):
        res.extras["high"] = layer_pos()  # type: ignore[index]
    assert res.replace(meta=META.replace(seed=4)).meta.seed == 4


def test_axes_vocabulary() -> None:
    assert {"prompt", "layer", "head", "pos", "neuron", "freq", "digit", "class"} <= set(AXES)
    assert len(set(AXES)) == len(AXES)


# -- frames and ranking -------------------------------------------------------------------------


def test_to_frame_is_tidy_with_labels_and_broadcast_extras() -> None:
    values = layer_pos()
    per_layer = xr.DataArray([10.0, 20.0], dims="layer", coords={"layer": [0, 1]})
    res = Result(values=values, meta=META, extras={"layer_norm": per_layer})
    frame = res.to_frame()
    assert list(frame.columns) == ["layer", "pos", "pos_token", "value", "layer_norm"]
    assert len(frame) == 6
    row = frame[(frame.layer == 1) & (frame.pos == 1)].iloc[0]
    assert row["value"] == 4.0 and row["pos_token"] == "+" and row["layer_norm"] == 20.0


def test_to_frame_uses_positions_for_dims_without_coords() -> None:
    res = Result(values=xr.DataArray(np.ones((2, 2)), dims=("head", "neuron")), meta=META)
    frame = res.to_frame()
    assert frame["head"].tolist() == [0, 0, 1, 1] and frame["neuron"].tolist() == [0, 1, 0, 1]


def test_top_orders_by_abs_value_and_negative_value() -> None:
    res = Result(values=layer_pos(np.array([[1.0, -5.0, 2.0], [np.nan, 3.0, -4.0]])), meta=META)
    assert res.top(3)["value"].tolist() == [-5.0, -4.0, 3.0]
    assert res.top(2, by="value")["value"].tolist() == [3.0, 2.0]
    assert res.top(1, by="-value")[["layer", "pos", "pos_token"]].iloc[0].tolist() == [0, 1, "+"]
    assert len(res.top(10)) == 5  # the NaN cell is skipped
    with pytest.raises(ResultError, match="by="):
        res.top(3, by="largest")  # type: ignore[arg-type]
    with pytest.raises(ResultError, match="dims"):
        res.top(3, dims=["head"])


def test_top_averages_over_prompts_and_other_dims() -> None:
    data = np.array([[[1.0, 3.0]], [[3.0, -7.0]]])  # prompt x layer x head
    values = xr.DataArray(data, dims=("prompt", "layer", "head"), coords={"head": [4, 5]})
    res = Result(values=values, meta=META)
    top = res.top(2)
    assert top["head"].tolist() == [4, 5] and top["value"].tolist() == [2.0, -2.0]
    by_head = res.top(1, dims=["head"], by="-value")
    assert list(by_head.columns) == ["rank", "head", "value"] and by_head["value"].item() == -2.0


def test_sel_returns_values_selection() -> None:
    res = Result(values=layer_pos(), meta=META)
    assert float(res.sel(layer=1, pos=2)) == 5.0


def test_repr_names_class_dims_metric_method_and_model() -> None:
    res = PatchingLike(values=layer_pos(), meta=META, clean_logit_diff=2.5)
    text = repr(res)
    for part in ("PatchingLike", "layer: 2", "pos: 3", "logit_diff_recovered", "unit", "tiny"):
        assert part in text
    assert "<table" in res._repr_html_()


def test_plot_labels_heatmap_axes_with_tokens() -> None:
    fig = Result(values=layer_pos(), meta=META).plot()
    (trace,) = fig.data
    assert trace.type == "heatmap"
    assert list(trace.x) == ["0 7", "1 +", "2 ="] and list(trace.y) == ["0", "1"]
    assert fig.layout.xaxis.title.text == "pos" and fig.layout.yaxis.title.text == "layer"
    assert "unit" in fig.layout.title.text and "value" in fig.layout.title.text


def test_plot_of_one_dim_estimate_has_error_bars() -> None:
    fig = EstimateTable.example().plot()
    assert fig.data[0].error_y.array is not None


# -- save / load --------------------------------------------------------------------------------


def test_subclass_fields_round_trip(tmp_path: Path) -> None:
    res = PatchingLike(values=layer_pos(), meta=META, clean_logit_diff=2.5, notes=["a", {"b": 1}])
    back = Result.load(res.save(tmp_path / "p"))
    assert type(back) is PatchingLike and back == res
    assert back.clean_logit_diff == 2.5 and back.notes == ["a", {"b": 1}]


def test_non_json_fields_are_refused_on_save(tmp_path: Path) -> None:
    res = PatchingLike(values=layer_pos(), meta=META, notes=[np.zeros(2)])
    with pytest.raises(ResultError, match="plain JSON"):
        res.save(tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_loading_as_another_class_fails(tmp_path: Path) -> None:
    OtherKind(values=layer_pos(), meta=META).save(tmp_path / "o")
    with pytest.raises(ResultError, match="OtherKind"):
        PatchingLike.load(tmp_path / "o")
    assert type(Result.load(tmp_path / "o")) is OtherKind
    ScalarTable.example().save(tmp_path / "s")
    assert type(ScalarTable.load(tmp_path / "s")) is ScalarTable
    with pytest.raises(ResultError, match="not a EstimateTable|not an? EstimateTable"):
        EstimateTable.load(tmp_path / "s")


def test_missing_and_incomplete_directories(tmp_path: Path) -> None:
    with pytest.raises(ResultError, match="no result directory"):
        Result.load(tmp_path / "nowhere")
    target = Result(values=layer_pos(), meta=META).save(tmp_path / "r")
    (target / "values.npy").unlink()
    (target / "meta.json").unlink()
    with pytest.raises(ResultError, match=r"missing meta\.json, values\.npy"):
        Result.load(target)


def test_unknown_class_and_future_format(tmp_path: Path) -> None:
    target = Result(values=layer_pos(), meta=META).save(tmp_path / "r")
    header = json.loads((target / "result.json").read_text())
    (target / "result.json").write_text(json.dumps({**header, "class": "NoSuchResult"}))
    with pytest.raises(ResultError, match="unknown result class 'NoSuchResult'"):
        Result.load(target)
    (target / "result.json").write_text(json.dumps({**header, "format_version": 99}))
    with pytest.raises(ResultError, match="format version 99"):
        Result.load(target)
    with pytest.raises(ResultError, match="unknown result class"):
        result_class("NoSuchResult")


def test_class_names_are_unique_across_modules() -> None:
    with pytest.raises(TypeError, match="already registered"):
        type("ScalarTable", (Result,), {"__module__": "somewhere.else"})


def test_saved_files_need_no_pickle(tmp_path: Path) -> None:
    res = EstimateTable.example()
    target = res.save(tmp_path / "e")
    arrays = sorted(target.rglob("*.npy"))
    assert [p.relative_to(target).as_posix() for p in arrays] == [
        "extras/ci_high/values.npy",
        "extras/ci_low/values.npy",
        "extras/n/values.npy",
        "values.npy",
    ]
    for path in arrays:
        np.load(path, allow_pickle=False)
    for path in target.rglob("*.json"):
        json.loads(path.read_text())
    assert {p.suffix for p in target.rglob("*") if p.is_file()} == {".npy", ".json"}


def test_string_values_and_object_coords_round_trip(tmp_path: Path) -> None:
    tokens = xr.DataArray(
        np.array([["7", "+"], ["=", "12"]], dtype=object),
        dims=("layer", "token"),
        coords={"token": np.array(["a", "b"], dtype=object), "layer": [0, 1]},
        name="decoded",
    )
    res = ScalarTable(values=tokens, meta=META)
    back = ScalarTable.load(res.save(tmp_path / "t"))
    assert back.values.values.tolist() == tokens.values.tolist()
    assert back.values.coords["token"].values.tolist() == ["a", "b"]
    assert back.metric == "decoded"


def test_nan_float_coords_and_attrs_round_trip(tmp_path: Path) -> None:
    values = xr.DataArray(
        np.arange(3.0), dims="freq", coords={"freq": [0.5, np.nan, np.inf]}, attrs={"unit": "rad"}
    )
    back = Result.load(Result(values=values, meta=META).save(tmp_path / "f"))
    assert back.values.identical(values)


def test_unsavable_dtype_is_refused(tmp_path: Path) -> None:
    values = xr.DataArray(np.array([1 + 2j, 3j]), dims="freq")
    with pytest.raises(ResultError, match="complex"):
        Result(values=values, meta=META).save(tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_save_replaces_an_existing_result_entirely(tmp_path: Path) -> None:
    target = tmp_path / "r"
    EstimateTable.example().save(target)
    Result(values=layer_pos(), meta=META).save(target)
    back = Result.load(target)
    assert type(back) is Result and not (target / "extras").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_failed_save_keeps_the_previous_result(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "r"
    old = Result(values=layer_pos(), meta=META)
    old.save(target)

    real_save = np.save
    calls = []

    def save_then_fail(*args, **kwargs):
        calls.append(args[0])
        if len(calls) > 1:
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(serialize.np, "save", save_then_fail)
    new = EstimateTable.example()
    with pytest.raises(OSError, match="disk full"):
        new.save(target)
    assert len(calls) == 2  # it failed midway, after writing the first array
    assert Result.load(target) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # temp dir cleaned up


def test_from_frame_inverts_to_frame() -> None:
    res = ScalarTable.example()
    frame = res.to_frame()
    again = ScalarTable.from_frame(frame, dims=res.dims, metric=res.metric, meta=res.meta)
    # A dim without coords comes back labelled by its positions.
    assert again.values.identical(res.values.assign_coords(prompt=np.arange(4)))
    est = EstimateTable.example()
    again_est = EstimateTable.from_frame(
        est.to_frame(),
        dims=est.dims,
        metric=est.metric,
        meta=est.meta,
        extras=["ci_low", "ci_high"],
    )
    assert np.allclose(again_est.extras["ci_low"], est.extras["ci_low"])
    with pytest.raises(ResultError, match="several rows"):
        ScalarTable.from_frame(frame, dims=["layer"], metric=res.metric, meta=META)


def test_estimate_table_needs_interval_bounds() -> None:
    with pytest.raises(ResultError, match="ci_low"):
        EstimateTable(values=layer_pos(), meta=META)
