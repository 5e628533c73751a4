"""One vocabulary: site labels round-trip, and every per-kind table comes from SITE_KIND_INFO."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from arithinterp.errors import SiteError
from arithinterp.models.model import select
from arithinterp.models.site import (
    HEAD_KINDS,
    LABEL_FORMS,
    LAYERLESS_KINDS,
    NEURON_KINDS,
    SITE_KIND_INFO,
    SITE_KINDS,
    Site,
)

_index = st.one_of(st.none(), st.integers(0, 10_000))


@st.composite
def sites(draw) -> Site:
    kind = draw(st.sampled_from(SITE_KINDS))
    info = SITE_KIND_INFO[kind]
    layer = draw(st.integers(0, 200)) if info.layered else None
    head = draw(_index) if info.unit == "head" else None
    neuron = draw(_index) if info.unit == "neuron" else None
    pos = draw(st.one_of(st.none(), st.integers(-4096, 4096)))
    return Site(kind, layer, head, neuron, pos)


@given(sites())
def test_from_label_reads_back_every_label(site: Site) -> None:
    assert Site.from_label(site.label) == site


def test_every_kind_round_trips_in_every_shape() -> None:
    for kind in SITE_KINDS:
        info = SITE_KIND_INFO[kind]
        for pos in (None, 0, -1, 7):
            units = [None, 0, 3] if info.unit else [None]
            for unit in units:
                site = Site(kind, 2 if info.layered else None,
                            unit if info.unit == "head" else None,
                            unit if info.unit == "neuron" else None, pos)
                assert Site.from_label(site.label) == site, site


@pytest.mark.parametrize(("site", "label"), [
    (Site("attn_head", 0, head=1), "L0H1"),
    (Site("mlp_out", 0), "MLP0"),
    (Site("mlp_post", 0, neuron=17), "L0N17"),
    (Site("attn_out", 3), "ATTN3"),
    (Site("resid_pre", 0), "L0 pre"),
    (Site("resid_mid", 0), "L0 mid"),
    (Site("resid_post", 1), "L1 post"),
    (Site("embed"), "embed"),
    (Site("final_resid"), "final"),
    (Site("q", 2, head=1), "L2H1.q"),
    (Site("pattern", 2), "L2H*.pattern"),
    (Site("mlp_post", 1), "L1N*"),
    (Site("attn_head", 3, head=1, pos=-1), "L3H1@-1"),
    (Site("resid_pre", 2, pos=4), "L2 pre@4"),
])  # fmt: skip
def test_labels_that_results_and_reports_already_use(site: Site, label: str) -> None:
    assert site.label == label
    assert Site.from_label(label) == site


@pytest.mark.parametrize("text", [
    "", "L0", "H1", "L0H", "mlp0", "MLP", "L0 pre ", "L-1H0", "L01H1", "attn_head L0H1", "L0H1.z",
    "L0H1@", "L0H1@x", "L0H1\n", " L0H1", "logits", "embed0", "L0N1.q", None, 3,
])  # fmt: skip
def test_from_label_rejects_what_is_not_a_label(text) -> None:
    with pytest.raises(SiteError) as err:
        Site.from_label(text)
    message = str(err.value)
    for form in LABEL_FORMS.values():
        assert form in message
    assert "@<pos>" in message


def test_kind_sets_derive_from_the_descriptor_with_their_old_values() -> None:
    # The hand-written tables these replaced, as the known answer.
    assert {"embed", "final_resid"} == LAYERLESS_KINDS
    assert {"attn_head", "q", "k", "v", "pattern"} == HEAD_KINDS
    assert {"mlp_post"} == NEURON_KINDS
    assert tuple(SITE_KIND_INFO) == SITE_KINDS


def test_execution_order_is_the_old_table() -> None:
    from arithinterp.models.backends.base import execution_order

    old = {"resid_pre": 0, "q": 1, "k": 2, "v": 3, "pattern": 4, "attn_head": 5, "attn_out": 6,
           "resid_mid": 7, "mlp_post": 8, "mlp_out": 9, "resid_post": 10}
    for kind, order in old.items():
        assert execution_order(Site(kind, 3)) == (3, order)
    assert execution_order(Site("embed")) == (-1, 0)
    assert execution_order(Site("final_resid")) == (1 << 30, 0)


def test_patching_engine_tables_are_the_old_ones() -> None:
    from arithinterp.methods import patching_engine

    assert patching_engine._STAGE == {
        "embed": "pre", "resid_pre": "pre",
        "resid_mid": "mid", "attn_out": "mid", "attn_head": "mid", "q": "mid", "k": "mid", "v": "mid",
        "pattern": "mid",
        "mlp_post": "post", "mlp_out": "post", "resid_post": "post",
        "final_resid": "final",
    }  # fmt: skip
    assert {"embed", "resid_pre", "resid_mid", "resid_post", "attn_out",
                                         "mlp_out", "attn_head", "mlp_post", "final_resid"} == patching_engine._ADDITIVE


def test_ablation_tables_are_the_old_ones() -> None:
    from arithinterp.methods import ablation

    assert set(ablation.SENDER_KINDS) == {"attn_head", "attn_out", "mlp_out", "embed", "resid_pre",
                                          "resid_mid", "resid_post"}
    assert set(ablation.RECEIVER_KINDS) == {"q", "k", "v", "mlp_post", "resid_pre", "resid_mid",
                                            "resid_post", "final_resid"}
    assert ablation._POINT == {"resid_pre": 1, "attn_head": 2, "attn_out": 2, "resid_mid": 3,
                               "mlp_out": 4, "resid_post": 5}
    assert ablation._point(Site("embed")) == 0
    assert set(ablation.CIRCUIT_KINDS) == {"attn_head", "attn_out", "mlp_out", "mlp_post"}


def test_tl_backend_hooks_every_kind() -> None:
    pytest.importorskip("transformer_lens")
    from arithinterp.models.backends import tl

    # resid_mid is built from resid_pre + attn_out (see the module's docstring)
    assert set(tl._HOOK_NAMES) | {"resid_mid"} == set(SITE_KINDS)


def test_select_follows_the_layout() -> None:
    """The old hand-written index per kind, as the known answer."""
    x = torch.arange(2 * 5 * 4 * 3).reshape(2, 5, 4, 3)
    assert torch.equal(select(x, Site("attn_head", 0, head=2, pos=1)), x[:, 1, 2])
    assert torch.equal(select(x, Site("q", 0, pos=-1)), x[:, -1])
    assert torch.equal(select(x, Site("pattern", 0, head=1, pos=3)), x[:, 1, 3])
    assert torch.equal(select(x, Site("pattern", 0, head=1)), x[:, 1])
    y = x.reshape(2, 5, 12)
    assert torch.equal(select(y, Site("mlp_post", 0, neuron=7, pos=2)), y[:, 2, 7])
    assert torch.equal(select(y, Site("resid_pre", 0, pos=2)), y[:, 2])
    assert torch.equal(select(y, Site("embed")), y)
