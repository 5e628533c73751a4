"""arithinterp: mechanistic interpretability of arithmetic in transformers."""

from arithinterp.errors import ArithInterpError
from arithinterp.models import Model, Site, load_model

__all__ = ["ArithInterpError", "Model", "Site", "load_model"]
