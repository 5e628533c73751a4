"""Planted-circuit benchmark: small GPT-2 models whose circuit is known by construction.

>>> from arithinterp.planted import PLANTED, planted
>>> PLANTED
('and', 'decoy', 'backup', 'negative', 'compose', 'lookup')
>>> p = planted("backup", backend="nnsight")        # doctest: +SKIP
>>> sorted(p.truth), p.roles["L0H1"]                 # doctest: +SKIP
(['L0H0', 'L0H1', 'L0H2', 'MLP0'], 'backup')

Every model is a Hugging Face GPT-2 directory with hand-set weights, built once into a
cache directory and loaded with :func:`arithinterp.models.load_model` on either backend.
:mod:`arithinterp.planted.grade` scores attribution and discovery methods against the truth
(AUROC, MIB's CPR and CMD).
"""

from arithinterp.planted.and_model import build_and_model
from arithinterp.planted.suite import (
    PLANTED,
    Planted,
    PlantedSpec,
    Role,
    component_labels,
    planted,
    planted_spec,
)

__all__ = [
    "PLANTED",
    "Planted",
    "PlantedSpec",
    "Role",
    "build_and_model",
    "component_labels",
    "planted",
    "planted_spec",
]
