"""The dashboard answers only requests addressed to the host it serves.

A page on another site can make the browser send requests to ``127.0.0.1`` under a name it
controls (DNS rebinding); such requests carry that name in their ``Host`` header. The
dashboard has no authentication, so it refuses every request whose ``Host`` is not a name of
this machine's loopback interface or the host the user chose to bind.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable
from typing import Any

__all__ = ["LOCAL_HOSTS", "allowed_host", "refuse_foreign_hosts"]

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def _machine_names() -> set[str]:
    names = {socket.gethostname(), socket.getfqdn()}
    with contextlib.suppress(OSError):
        names.add(socket.gethostbyname(socket.gethostname()))
    return {n.lower() for n in names if n}


def _host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port (``[::1]:8050`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def allowed_host(header: str | None, extra: Iterable[str] = ()) -> bool:
    """Whether a request with this ``Host`` header may be served."""
    if not header:
        return False
    return _host_name(header) in LOCAL_HOSTS | {h.lower() for h in extra}


def refuse_foreign_hosts(server: Any, extra: Iterable[str] = ()) -> None:
    """Make the Flask ``server`` answer 400 to any request whose ``Host`` is not allowed."""
    from flask import request

    names = set(extra)
    if names & _WILDCARDS:  # bound to every interface: this machine's own names too
        names |= _machine_names()
    names = frozenset(names - _WILDCARDS)

    @server.before_request
    def _check_host() -> Any:
        if not allowed_host(request.headers.get("Host"), names):
            return ("refused: this dashboard answers only requests addressed to "
                    f"{', '.join(sorted(LOCAL_HOSTS | names))} (Host header check)", 400)
        return None
