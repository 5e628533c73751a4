"""Pipelines: validated YAML configs, the step runner and the CLI."""

from typing import TYPE_CHECKING

from arithinterp._lazy import lazy_exports

if TYPE_CHECKING:
    from arithinterp.pipeline.config import PipelineConfig, load_config
    from arithinterp.pipeline.runner import RunSummary, run_pipeline

__all__ = ["PipelineConfig", "RunSummary", "load_config", "run_pipeline"]

# Loaded on first use: importing the CLI (a submodule) must not import the methods and torch.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "PipelineConfig": "arithinterp.pipeline.config",
        "load_config": "arithinterp.pipeline.config",
        "RunSummary": "arithinterp.pipeline.runner",
        "run_pipeline": "arithinterp.pipeline.runner",
    },
)
