"""Results: labeled values with provenance, tidy frames, figures and atomic save/load.

Every analysis returns a :class:`Result` (or a subclass). The generic
:class:`ScalarTable` and :class:`EstimateTable` cover numbers that need no
class of their own.
"""

from arithinterp.results.base import (
    AXES,
    FORMAT_VERSION,
    Result,
    registered_result_classes,
    result_class,
    resultclass,
)
from arithinterp.results.io import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    to_jsonable,
)
from arithinterp.results.meta import ResultMeta, package_version, stable_hash
from arithinterp.results.stats import bootstrap_ci
from arithinterp.results.tables import EstimateTable, ScalarTable

__all__ = [
    "AXES",
    "FORMAT_VERSION",
    "EstimateTable",
    "Result",
    "ResultMeta",
    "ScalarTable",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "bootstrap_ci",
    "package_version",
    "registered_result_classes",
    "result_class",
    "resultclass",
    "stable_hash",
    "to_jsonable",
]
