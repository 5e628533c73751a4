"""What a run will need, checked against what the model and the machine have, before it starts.

The estimate is deliberately simple and on the high side: the activations a method may hold
for every prompt at once (the residual stream at every layer and position, for clean and
corrupt runs) plus the answer logits. Methods batch their forward passes, so the real peak is
usually lower; a run the estimate refuses would at best swap.
"""

from __future__ import annotations

import os

from arithinterp.errors import ResourceError
from arithinterp.models.site import ModelShape

__all__ = ["available_memory", "check_memory", "estimate_run_bytes"]


def estimate_run_bytes(shape: ModelShape, n_prompts: int, seq_len: int, itemsize: int) -> int:
    """Bytes a step may hold for ``n_prompts`` prompts of ``seq_len`` tokens."""
    per_prompt = seq_len * (shape.n_layers + 1) * shape.d_model + shape.d_vocab
    return 2 * n_prompts * per_prompt * itemsize


def available_memory() -> int | None:
    """Bytes this machine can still give (``MemAvailable``), or ``None`` where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needed: int, what: str, available: int | None = None) -> None:
    """Raise :class:`ResourceError` with the estimate when ``needed`` exceeds what is free."""
    free = available_memory() if available is None else available
    if free is not None and needed > free:
        raise ResourceError(
            f"{what} needs an estimated {_gib(needed)} of memory but {_gib(free)} is available; "
            "use fewer prompts (task n) or a smaller model"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
