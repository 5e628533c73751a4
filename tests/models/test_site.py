import pytest

from arithinterp.errors import ArithInterpError, SiteError
from arithinterp.models.site import SITE_KINDS, ModelShape, Site, all_sites

SHAPE = ModelShape(n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=64, d_vocab=20, n_ctx=32)


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(SiteError) as err:
        Site("resid", layer=0)
    assert isinstance(err.value, ArithInterpError)
    for kind in SITE_KINDS:
        assert kind in str(err.value)


@pytest.mark.parametrize(
    "site, fragment",
    [
        (Site("resid_pre", layer=2), "layers 0..1"),
        (Site("attn_head", layer=0, head=4), "heads 0..3"),
        (Site("mlp_post", layer=1, neuron=64), "neurons 0..63"),
    ],
)
def test_out_of_range_names_valid_range(site, fragment):
    with pytest.raises(SiteError, match=fragment):
        site.validate(SHAPE)


def test_position_range_checked_against_sequence():
    Site("resid_pre", layer=0, pos=-8).validate(SHAPE, seq_len=8)
    with pytest.raises(SiteError, match="-8..7"):
        Site("resid_pre", layer=0, pos=8).validate(SHAPE, seq_len=8)


def test_wrong_selectors_rejected():
    with pytest.raises(SiteError, match="needs a layer"):
        Site("attn_out")
    with pytest.raises(SiteError, match="takes no head"):
        Site("mlp_out", layer=0, head=1)
    with pytest.raises(SiteError, match="takes no neuron"):
        Site("attn_head", layer=0, neuron=1)
    with pytest.raises(SiteError, match="takes no layer"):
        Site("embed", layer=0)


def test_all_sites_enumerates_every_cell_in_order():
    heads = all_sites(SHAPE, "attn_head", per_head=True, positions=3)
    assert len(heads) == 2 * 4 * 3
    assert heads[0] == Site("attn_head", 0, 0, None, 0)
    assert heads[-1] == Site("attn_head", 1, 3, None, 2)
    assert all_sites(SHAPE, "final_resid") == [Site("final_resid")]
    assert len(all_sites(SHAPE, "mlp_post", per_neuron=True)) == 2 * 64


def test_key_value_heads_are_checked_against_their_own_count():
    gqa = ModelShape(n_layers=2, n_heads=4, d_model=32, d_head=8, d_mlp=64, d_vocab=20, n_ctx=32, n_kv_heads=2)
    Site("q", layer=0, head=3).validate(gqa)
    Site("k", layer=0, head=1).validate(gqa)
    with pytest.raises(SiteError, match="key/value heads 0..1"):
        Site("v", layer=0, head=3).validate(gqa)
    assert len(all_sites(gqa, "k", per_head=True)) == 2 * 2
