"""Model cards: the README is a pure function of ``card.json``."""

from __future__ import annotations

from pathlib import Path

import pytest

from arithinterp.zoo.card import read_card, render_readme

MODELS = sorted(p for p in (Path(__file__).parents[2] / "arithinterp/zoo/models").iterdir() if p.is_dir())


@pytest.mark.parametrize("model_dir", MODELS, ids=lambda p: p.name)
def test_render_readme_reproduces_the_shipped_readme(model_dir: Path) -> None:
    """Every shipped README is byte for byte what its card renders to, so regenerating
    one after a code change (``write_readme``) changes nothing unintended."""
    assert render_readme(read_card(model_dir)) == (model_dir / "README.md").read_text()


def test_sections_appear_only_when_the_card_has_their_data() -> None:
    card = read_card(next(p for p in MODELS if p.name == "modadd-113"))
    assert "## Checkpoints across training" in render_readme(card)
    bare = {**card, "checkpoints": [], "notes": [], "recipe": {**card["recipe"], "notes": []},
            "metrics": {k: v for k, v in card["metrics"].items() if k not in ("train", "test")}}
    text = render_readme(bare)
    assert "## Checkpoints across training" not in text
    assert "## Deviations and known failures" not in text
    assert text.index("## Accuracy") < text.index("## Training") < text.index("## Load")
