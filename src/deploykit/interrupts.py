"""Ctrl-C that stops a run even when it lands where Python cannot raise.

TensorFlow frees much of its state in ``__del__`` finalizers. A SIGINT whose KeyboardInterrupt is raised
inside one is swallowed there (Python prints "Exception ignored in: <function UniquePtr.__del__>" at
most), and the run went on to the end: with ``force`` it then replaced the previous run the user meant
to keep. The handler here counts each interrupt as well as raising it, and the run checks the count at
each step (``check``), so a swallowed interrupt stops it one step later, and what it wrote is removed.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Iterator


class CountedInterrupts:
    """Counts SIGINT (and SIGTERM where installed for it) and raises KeyboardInterrupt until ``written``."""

    def __init__(self) -> None:
        self.count = 0
        self.signum = signal.SIGINT  # the last one counted: SIGTERM exits 143, as a process killed by it would
        self.written = False  # the run is complete and on disk: a late interrupt changes nothing

    def handler(self, signum: int, frame: object) -> None:
        self.count += 1
        self.signum = signum
        if not self.written:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise the KeyboardInterrupt a finalizer swallowed, if one came."""
        if self.count and not self.written:
            raise KeyboardInterrupt


def quiet_unraisable_interrupts() -> Any:
    """Drop Python's "Exception ignored in: ... KeyboardInterrupt" echo with its traceback (the interrupt was
    counted and stops the run at its next step, which says so); returns the hook to put back."""
    default = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            default(unraisable)

    sys.unraisablehook = hook
    return default


@contextlib.contextmanager
def counted_sigint() -> Iterator[CountedInterrupts | None]:
    """Count Ctrl-C for the duration, where the caller left Python's default handler in the main thread.

    Yields the counter, or None where a handler is the caller's own (the ``deploy`` CLI installs its own
    counter; a notebook or web server theirs) or signals cannot be set (another thread). Both the handler
    and the unraisable hook are put back afterwards."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield None
        return
    counter = CountedInterrupts()
    signal.signal(signal.SIGINT, counter.handler)
    hook = quiet_unraisable_interrupts()
    try:
        yield counter
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = hook
