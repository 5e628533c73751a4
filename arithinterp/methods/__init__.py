"""Analysis methods: pure functions of (model, prompts, options) returning a Result."""

from arithinterp.methods.evaluate import EvalResult, evaluate
from arithinterp.methods.lens import LensResult, logit_lens

__all__ = ["EvalResult", "LensResult", "evaluate", "logit_lens"]
