"""Analysis methods: pure functions of (model, prompts, options) returning a Result."""

from arithinterp.methods.evaluate import EvalResult, evaluate
from arithinterp.methods.lens import LensResult, logit_lens

__all__ = ["EvalResult", "LensResult", "evaluate", "logit_lens"]

from arithinterp.methods.mediation import MediationResult, mediate  # noqa: E402

__all__ += ["MediationResult", "mediate"]

from arithinterp.methods.ablation import (  # noqa: E402
    FaithfulnessResult,
    PathPatchingResult,
    ablate,
    faithfulness,
    path_patch,
)

__all__ += ["FaithfulnessResult", "PathPatchingResult", "ablate", "faithfulness", "path_patch"]

from arithinterp.methods.attribution import AttributionResult, attribution_patch, compare_with_exact  # noqa: E402
from arithinterp.methods.edge_attribution import EdgeAttributionResult, edge_attribution_patch  # noqa: E402

__all__ += ["AttributionResult", "EdgeAttributionResult", "attribution_patch", "compare_with_exact",
            "edge_attribution_patch"]
