"""Machine-readable exports written atomically: JSON summaries and Parquet tables."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pandas as pd

from arithinterp.results.io import atomic_write_bytes, atomic_write_json

__all__ = ["write_json_summary", "write_parquet"]


def write_json_summary(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as strict, indented JSON to ``path`` atomically.

    Accepts what :func:`arithinterp.results.to_jsonable` does: numpy values,
    DataFrames (as records), enums, paths, dataclasses (``ResultMeta``
    included), pydantic models. NaN and infinities become ``null``.
    """
    return atomic_write_json(path, obj)


def write_parquet(path: str | os.PathLike[str], frame: pd.DataFrame) -> Path:
    """Write ``frame`` (e.g. ``result.to_frame()``) to a Parquet file atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return atomic_write_bytes(path, buffer.getvalue())
