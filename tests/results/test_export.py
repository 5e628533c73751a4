"""Result.at (negative positions), Result.to_xarray / to_netcdf and back."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xarray as xr

import arithinterp.methods  # noqa: F401  (registers every result class)
from arithinterp.errors import ResultError
from arithinterp.results import Result, ResultMeta, registered_result_classes
from arithinterp.results.export import netcdf_engine

CLASSES = registered_result_classes()


def _result(pos, seq_len=None) -> Result:
    values = xr.DataArray(np.arange(2 * len(pos), dtype=float).reshape(2, len(pos)),
                          dims=("layer", "pos"),
                          coords={"layer": [0, 1], "pos": pos,
                                  "pos_token": ("pos", [f"t{p}" for p in pos])})
    extra = {} if seq_len is None else {"seq_len": seq_len}
    return Result(values=values, meta=ResultMeta(method="test", extra=extra),
                  extras={"ci_low": values - 1})


def test_at_counts_positions_from_the_end():
    res = _result([0, 1, 2, 3, 4])
    assert res.at(pos=-1).identical(res.sel(pos=4))
    assert res.at(pos=-5).identical(res.sel(pos=0))
    assert res.at(pos=[-1, 0]).identical(res.sel(pos=[4, 0]))
    assert res.at(pos=-2, layer=1).item() == res.values.sel(pos=3, layer=1).item() == 8.0
    assert res.at(pos=slice(1, 2)).identical(res.sel(pos=slice(1, 2)))  # anything else: as sel
    assert res.at(layer=0).identical(res.sel(layer=0))
    with pytest.raises(ResultError, match="outside a sequence of 5 tokens"):
        res.at(pos=-6)
    with pytest.raises(ResultError, match="no position 7"):
        res.at(pos=7)


def test_at_on_a_subset_of_positions_needs_the_sequence_length():
    res = _result([3, 5], seq_len=6)  # a sweep over positions=[3, -1] of a 6-token sequence
    assert res.at(pos=-1).identical(res.sel(pos=5))
    assert res.at(pos=-3).identical(res.sel(pos=3))
    with pytest.raises(ResultError, match="no position 4"):
        res.at(pos=-2)
    with pytest.raises(ResultError, match="unknown length"):
        _result([3, 5]).at(pos=-1)


def test_to_xarray_is_values_plus_extras():
    res = _result([0, 1, 2])
    ds = res.to_xarray()
    assert set(ds.data_vars) == {"value", "ci_low"}
    np.testing.assert_array_equal(ds["value"].values, res.values.values)
    np.testing.assert_array_equal(ds["ci_low"].values, res.extras["ci_low"].values)
    assert list(ds["pos_token"].values) == ["t0", "t1", "t2"]
    assert ds.attrs["arithinterp_class"] == "Result"
    assert Result.from_xarray(ds) == res


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_netcdf_round_trip(cls, tmp_path):
    res = cls.example()
    path = res.to_netcdf(tmp_path / "result.nc")
    with xr.open_dataset(path, engine=netcdf_engine()) as ds:  # a plain netCDF file
        assert set(ds.data_vars) == {res.metric, *res.extras}
        np.testing.assert_array_equal(ds[res.metric].values, res.values.values)
    # netCDF holds the values and extras; a field holding a whole result (a DigitConfidenceResult's
    # per-prompt records) stays with save()/load() and comes back as None
    want = dataclasses.replace(res, **dict.fromkeys(res._parts()))
    for loader in (Result, cls):
        back = loader.from_netcdf(path)
        assert type(back) is cls and back == want
        assert back.values.identical(res.values)
        assert back.meta == res.meta


def test_from_netcdf_checks_the_class(tmp_path):
    path = _result([0, 1]).to_netcdf(tmp_path / "r.nc")
    other = next(cls for cls in CLASSES if cls is not Result)
    with pytest.raises(ResultError, match="not a"):
        other.from_netcdf(path)
    with pytest.raises(ResultError, match="no netCDF file"):
        Result.from_netcdf(tmp_path / "missing.nc")
    with pytest.raises(ResultError, match="not written by Result.to_xarray"):
        Result.from_xarray(xr.Dataset({"x": ("layer", [1.0])}))
