"""Pipelines: validated YAML configs, the step runner and the CLI."""

from arithinterp.pipeline.config import PipelineConfig, load_config
from arithinterp.pipeline.runner import RunSummary, run_pipeline

__all__ = ["PipelineConfig", "RunSummary", "load_config", "run_pipeline"]
