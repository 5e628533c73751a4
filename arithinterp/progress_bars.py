"""Progress bars that suit where their output goes.

On a terminal (and in Jupyter) a progress bar redraws itself in place. In a log file (CI,
``nohup``, ``2> run.log``) every redraw is a carriage return and, for nested bars, cursor
escapes, so a long run floods the log with fragments. :func:`tqdm` is a drop-in for
``tqdm.auto.tqdm`` that, when stderr is not a terminal, writes whole lines instead:

- a top-level bar (``leave=True``) writes a line when it starts, then at most one every
  :data:`LINE_INTERVAL` seconds, and one when it closes;
- a nested bar (``leave=False``) stays silent unless it runs longer than
  :data:`LINE_INTERVAL`; then it writes one line per interval and one when it closes.

:func:`hf_progress` does the same for Hugging Face's own bars (``Loading weights``) while a
model loads.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from numbers import Number
from typing import IO, Any

import tqdm.auto as _tqdm_auto
from tqdm.std import tqdm as _std_tqdm

__all__ = ["LINE_INTERVAL", "LineProgress", "hf_progress", "line_mode", "tqdm"]

#: Seconds between two lines of one bar in line mode.
LINE_INTERVAL = 15.0


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def line_mode(stream: IO[str] | None = None) -> bool:
    """Whether progress goes to ``stream`` (default stderr) as lines: it is not a terminal,
    and this is not a Jupyter kernel (whose bars are widgets)."""
    stream = sys.stderr if stream is None else stream
    if stream is None or _in_notebook():  # no stderr at all (pythonw), or widgets
        return False
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return True


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(*args, **kwargs)`` on a terminal or in Jupyter; a :class:`LineProgress`
    with the same arguments when the output is a file or a pipe."""
    if kwargs.get("disable") or not line_mode(kwargs.get("file")):
        return _tqdm_auto.tqdm(*args, **kwargs)
    return LineProgress(*args, **kwargs)


def _write(s: str, file: IO[str] | None = None, end: str = "\n", nolock: bool = False) -> None:
    """``tqdm.write``: a message that does not break the live bars (a plain line in line mode)."""
    if line_mode(file):
        LineProgress.write(s, file=file, end=end)
    else:
        _tqdm_auto.tqdm.write(s, file=file, end=end, nolock=nolock)


tqdm.write = _write  # type: ignore[attr-defined]


class LineProgress:
    """The part of tqdm's interface arithinterp uses, written as whole lines (no ``\\r``, no
    escape sequences): iteration, ``update``, ``set_postfix``, ``set_postfix_str``,
    ``set_description``, ``close`` and the context manager. Other tqdm options are accepted
    and ignored."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        desc: str | None = None,
        total: float | None = None,
        leave: bool | None = True,
        file: IO[str] | None = None,
        disable: bool = False,
        unit: str = "it",
        initial: float = 0,
        postfix: Mapping[str, Any] | str | None = None,
        interval: float = LINE_INTERVAL,
        **_ignored: Any,
    ) -> None:
        if total is None and iterable is not None:
            with contextlib.suppress(TypeError):
                total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.desc, self.total = iterable, desc or "", total
        self.leave, self.file, self.disable, self.unit = leave is not False, file, disable, unit
        self.n, self.postfix, self.interval = initial, "", interval
        self.start_t = self.last_t = time.monotonic()
        self.lines = 0
        self.closed = False
        if isinstance(postfix, Mapping):
            self.set_postfix(postfix, refresh=False)
        elif postfix is not None:
            self.postfix = str(postfix)
        if self.leave and not disable:
            self._write()

    # -- tqdm's interface ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress bar has no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self.last_t >= self.interval:
            self._write(now)

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True,
                    **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **{k: kwargs[k] for k in sorted(kwargs)}}
        self.postfix = ", ".join(
            f"{k}={_std_tqdm.format_num(v) if isinstance(v, Number) else str(v).strip()}"
            for k, v in items.items()
        )

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and (self.leave or self.lines):
            self._write(done=True)

    @staticmethod
    def write(s: str, file: IO[str] | None = None, end: str = "\n", nolock: bool = False) -> None:
        print(s, end=end, file=file or sys.stderr, flush=True)

    # -- the line ------------------------------------------------------------------------------

    def line(self, now: float | None = None, *, done: bool = False) -> str:
        """The text of one line: ``desc: n/total unit (pct%) elapsed[, eta] [postfix]``."""
        elapsed = (time.monotonic() if now is None else now) - self.start_t
        count = _std_tqdm.format_num(self.n) if self.n % 1 else str(int(self.n))
        text = f"{self.desc}: " if self.desc else ""
        if self.total:
            total = _std_tqdm.format_num(self.total) if self.total % 1 else str(int(self.total))
            text += f"{count}/{total} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f"{count} {self.unit}"
        text += f" {'done in' if done else 'elapsed'} {_std_tqdm.format_interval(elapsed)}"
        if not done and self.total and 0 < self.n < self.total and elapsed > 0:
            remaining = (self.total - self.n) * elapsed / self.n
            text += f", eta {_std_tqdm.format_interval(remaining)}"
        return f"{text} [{self.postfix}]" if self.postfix else text

    def _write(self, now: float | None = None, *, done: bool = False) -> None:
        self.last_t = time.monotonic() if now is None else now
        self.lines += 1
        print(self.line(now, done=done), file=self.file or sys.stderr, flush=True)


@contextlib.contextmanager
def hf_progress() -> Iterator[None]:
    """Inside this block, in line mode, Hugging Face's progress bars (transformers' ``Loading
    weights``, hub downloads) are :class:`LineProgress` bars that stay silent unless slow; on
    a terminal they are left alone. The previous setting is restored on exit."""
    if not line_mode():
        yield
        return
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:  # older transformers: no hook, so no bars at all while loading
        enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            if enabled:
                hf_logging.enable_progress_bar()
        return

    def as_lines(factory: Any, args: tuple, kwargs: dict) -> Any:
        if factory is not _tqdm_auto.tqdm:  # bars disabled: keep transformers' empty shim
            return factory(*args, **kwargs)
        return LineProgress(*args, **{**kwargs, "leave": False})

    previous = set_hook(as_lines)
    try:
        yield
    finally:
        set_hook(previous)
