"""The errors arithinterp raises for user mistakes.

Every user error is a subclass of :class:`ArithInterpError` and says what was
wrong and what would be valid. They are raised before any long computation.
"""

from __future__ import annotations


class ArithInterpError(Exception):
    """Base class of every error caused by input the user can fix."""


class SiteError(ArithInterpError, KeyError):
    """A site the model does not have (unknown kind, layer, head, neuron or position)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TaskError(ArithInterpError, ValueError):
    """A task specification that cannot be generated (bad operation, widths, format)."""


class TokenizationError(ArithInterpError, ValueError):
    """A prompt or answer the model's tokenizer cannot express as the method needs."""


class ModelLoadError(ArithInterpError, OSError):
    """A model spec that does not resolve to loadable weights."""


class ConfigError(ArithInterpError, ValueError):
    """A pipeline or method configuration that does not validate."""


class ResultError(ArithInterpError, ValueError):
    """A result directory that is missing, incomplete or of another kind."""


class MethodError(ArithInterpError, ValueError):
    """An option or input of an analysis method outside what it accepts."""


class OutputError(ArithInterpError, OSError):
    """An output place that cannot be written without losing data: a directory that is
    neither empty nor ours, an unwritable or occupied runs directory, a run locked by
    another process."""


class ResourceError(ArithInterpError, MemoryError):
    """A request larger than the machine or the model allows (memory, context length)."""
