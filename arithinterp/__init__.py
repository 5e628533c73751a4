"""arithinterp: mechanistic interpretability of arithmetic in transformers."""

from typing import TYPE_CHECKING

from arithinterp._lazy import lazy_exports
from arithinterp.errors import ArithInterpError

if TYPE_CHECKING:
    from arithinterp.models import Model, Site, load_model

__all__ = ["ArithInterpError", "Model", "Site", "load_model"]

# Model, Site and load_model import torch; they load on first use so that the command line
# starts fast (see arithinterp/_lazy.py).
__getattr__, __dir__ = lazy_exports(
    __name__, {name: "arithinterp.models" for name in ("Model", "Site", "load_model")}
)
