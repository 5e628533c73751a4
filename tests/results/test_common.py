"""The common conformance test every Result class must pass.

Add the module that defines a new result class to ``RESULT_MODULES``; its
classes register on import and are checked here through their ``example()``.
A listed module must import: a broken one fails the suite instead of being
silently skipped.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

RESULT_MODULES: list[str] = [
    "arithinterp.results",
    "arithinterp.methods.evaluate",
    "arithinterp.methods.lens",
    "arithinterp.methods.mediation",
    "arithinterp.methods.ablation",
    "arithinterp.methods.attribution",
    "arithinterp.methods.edge_attribution",
    "arithinterp.methods.patching",
    "arithinterp.methods.probe_sweep",
    "arithinterp.methods.fourier",
    "arithinterp.methods.progress",
    "arithinterp.methods.helix",
    "arithinterp.methods.components",
    "arithinterp.methods.neurons",
    "arithinterp.methods.tuned_lens",
    "arithinterp.methods.circuits",
]

for _module in RESULT_MODULES:
    importlib.import_module(_module)

from arithinterp.results import AXES, Result, ResultMeta, registered_result_classes  # noqa: E402

CLASSES = registered_result_classes()


def test_registry_holds_the_generic_classes() -> None:
    names = {cls.__name__ for cls in CLASSES}
    assert {"Result", "ScalarTable", "EstimateTable"} <= names


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_result_class_conformance(cls: type[Result], tmp_path) -> None:
    res = cls.example()
    assert type(res) is cls
    # A plain @dataclass on a subclass would swap in a generated __eq__ (which cannot
    # compare arrays) and a __repr__ that dumps them; @resultclass keeps Result's.
    assert "values=<xarray" not in repr(res), f"decorate {cls.__name__} with @resultclass"
    assert copy.deepcopy(res) == res, f"decorate {cls.__name__} with @resultclass"
    assert isinstance(res.meta, ResultMeta)
    assert set(res.dims) <= set(AXES)
    assert res.values.size > 0, "example() should hold at least one cell"
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.meta = res.meta  # type: ignore[misc]

    # to_frame: one row per cell, dims + metric + extras as columns.
    frame = res.to_frame()
    for column in [*res.dims, res.metric, *res.extras]:
        assert column in frame.columns, f"to_frame lacks column {column!r}"
    assert len(frame) == res.values.size
    np.testing.assert_array_equal(frame[res.metric].to_numpy(), res.values.values.reshape(-1))

    # save/load: same class, values, coords, extras, meta, fields, by both loaders.
    target = tmp_path / "result"
    res.save(target)
    for loader in (Result, cls):
        back = loader.load(target)
        assert type(back) is cls
        assert back.values.identical(res.values)
        assert back.values.dtype == res.values.dtype
        assert set(back.extras) == set(res.extras)
        for name, extra in res.extras.items():
            assert back.extras[name].identical(extra), name
        assert back.meta == res.meta
        assert back == res

    # plot: a Figure with data, built without touching global plotly state.
    template_before = pio.templates.default
    fig = res.plot()
    assert isinstance(fig, go.Figure)
    assert len(fig.data) >= 1
    assert res.plot().to_json() == fig.to_json(), "plot() must be a pure function of the data"
    assert pio.templates.default == template_before

    # top: at most k rows, best first.
    top = res.top(3)
    assert 1 <= len(top) <= 3
    assert list(top["rank"]) == list(range(1, len(top) + 1))
    magnitudes = top[res.metric].abs().to_numpy()
    assert np.all(np.diff(magnitudes) <= 0)

    text = repr(res)
    assert cls.__name__ in text and res.metric in text
    for dim, size in res.sizes.items():
        assert f"{dim}: {size}" in text
    assert cls.__name__ in res._repr_html_()
