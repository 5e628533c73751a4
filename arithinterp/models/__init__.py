"""Models: the :class:`Model` handle, :class:`Site` addresses and backends.

Only ``arithinterp.models.backends`` imports transformer_lens or nnsight.
"""

from arithinterp.models.loading import BACKENDS, load_model
from arithinterp.models.model import ActivationCache, Gradients, Model, Patch, select
from arithinterp.models.site import (
    SITE_KIND_INFO,
    SITE_KINDS,
    ModelShape,
    Site,
    SiteKindInfo,
    all_sites,
)

__all__ = [
    "BACKENDS",
    "SITE_KINDS",
    "SITE_KIND_INFO",
    "ActivationCache",
    "Gradients",
    "Model",
    "ModelShape",
    "Patch",
    "Site",
    "SiteKindInfo",
    "all_sites",
    "load_model",
    "select",
]
