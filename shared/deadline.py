"""The deadline of the client call running in this thread, and a sleep that keeps it.

A real federation runs its clients in parallel and the server stops waiting at the
round's timeout. The inline engine calls the clients one after another in one
process; it sets the round's deadline here (the time the round's messages went out
plus ``training.round_timeout``) around each call, and an injected straggler's delay
(client.faults) sleeps with :func:`sleep`, which stops at the deadline and raises
:class:`DeadlineExceeded` — so every straggler of a round waits out the same
deadline, as in parallel, and none computes a reply that would come too late.
Nothing sets a deadline on the other engines: :func:`sleep` is ``time.sleep``.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

_current = threading.local()


class DeadlineExceeded(RuntimeError):
    """The call would reply after its round's deadline."""


@contextmanager
def deadline(at: float | None):
    """Run the body with ``at`` (``time.monotonic()`` seconds; None: no deadline) as the
    current thread's call deadline."""
    previous = getattr(_current, "at", None)
    _current.at = at
    try:
        yield
    finally:
        _current.at = previous


def sleep(seconds: float) -> None:
    """``time.sleep(seconds)``, unless that ends past the current deadline: then sleep
    until the deadline and raise DeadlineExceeded."""
    at = getattr(_current, "at", None)
    if at is None or time.monotonic() + seconds <= at:
        time.sleep(seconds)
        return
    time.sleep(max(at - time.monotonic(), 0.0))
    raise DeadlineExceeded(f"a {seconds:g} s delay ends after the round's deadline")
