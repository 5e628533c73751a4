"""The errors arithinterp raises for user mistakes.

Every user error is a subclass of :class:`ArithInterpError` and says what was
wrong and what would be valid. They are raised before any long computation.
:class:`ChanceAccuracyWarning` is the one warning: results that are computed correctly but
come from a model at chance level on its prompts.
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


class ChanceAccuracyWarning(UserWarning):
    """A model scored at chance level on the prompts it was given (exact match under 5%).

    Not an error: the numbers are right, but an analysis of a model that cannot do the task
    explains little. The message names the likely cause: a prompt format, operation or digit
    count other than the one the model was trained on (``model.default_task``), or prompts
    longer than its training sequences. ``evaluate`` warns, the report prints it on its page and
    in ``summary.json``, and the pipeline logs it and records it in the step's ``step.json``.
    """
