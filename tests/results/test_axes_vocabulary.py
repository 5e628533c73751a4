"""One meaning per dim name: the documented vocabulary, and lens / probe depths that agree."""

import importlib
import pkgutil
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

import arithinterp
from arithinterp.models.site import ModelShape, Site, depth_site, site_depth
from arithinterp.results import AXES, registered_result_classes

CONCEPTS = Path(__file__).resolve().parents[2] / "docs" / "concepts.md"


def _documented_dims() -> set[str]:
    text = CONCEPTS.read_text(encoding="utf-8")
    section = text.split("## Axes and labels", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))


def _all_result_classes():
    for info in pkgutil.walk_packages(arithinterp.__path__, "arithinterp."):
        if ".dashboard" in info.name:
            continue
        importlib.import_module(info.name)
    return registered_result_classes()


def test_every_axis_is_documented_once() -> None:
    assert _documented_dims() == set(AXES)


@pytest.mark.parametrize("cls", _all_result_classes(), ids=lambda c: c.__name__)
def test_every_result_uses_documented_dims(cls) -> None:
    res = cls.example()
    documented = _documented_dims()
    assert set(res.values.dims) <= documented
    for extra in res.extras.values():
        assert set(extra.dims) <= documented
    # pos_token is the token *at* a position; the lens names the token it predicts next_token
    if "pos_token" in res.values.coords:
        assert "next_token" not in res.values.coords


def test_lens_names_the_token_it_predicts_next_token() -> None:
    from arithinterp.methods.lens import LensResult

    coords = LensResult.example().values.coords
    assert "next_token" in coords and "pos_token" not in coords


def _fake_model(n_layers: int):
    return SimpleNamespace(shape=ModelShape(n_layers=n_layers, n_heads=2, d_model=8, d_head=4,
                                            d_mlp=16, d_vocab=10, n_ctx=8))


@pytest.mark.parametrize("n_layers", [1, 2, 5])
def test_lens_and_probe_depths_agree_on_what_layer_k_means(n_layers: int) -> None:
    """A residual site has the same ``layer`` in a lens result and a probe result."""
    from arithinterp.methods.lens import depth_coords, lens_sites
    from arithinterp.methods.probe_sweep import resid_sites

    model = _fake_model(n_layers)
    lens = depth_coords(n_layers)
    lens_layer = dict(zip(lens["site"][1], lens["layer"]))
    assert [s.label for s in lens_sites(model)] == list(lens["site"][1])
    probe_sites, labels = resid_sites(model)
    assert labels == [s.label for s in probe_sites]
    shared = 0
    for site in probe_sites:
        if site.label in lens_layer:
            assert site_depth(site, n_layers) == lens_layer[site.label], site.label
            shared += 1
    assert shared == n_layers + 1  # every lens depth is also probed
    # the stream after block k is the stream entering block k + 1
    for k in range(n_layers):
        assert site_depth(Site("resid_post", k), n_layers) == site_depth(depth_site(k + 1, n_layers), n_layers)
    assert site_depth(Site("embed"), n_layers) == 0
    assert site_depth(Site("final_resid"), n_layers) == n_layers


def test_lens_depth_coordinates_keep_their_saved_labels() -> None:
    from arithinterp.methods.lens import depth_coords

    c = depth_coords(2)
    assert list(c["layer"]) == [0, 1, 2]
    assert list(c["site"][1]) == ["L0 pre", "L1 pre", "L1 post"]
    assert list(c["layer_label"][1]) == ["embed", "after L0", "after L1"]
