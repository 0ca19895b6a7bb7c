"""Small helpers shared by the Name Server contract tests."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


class Call:
    """Run `fn` in a background thread and record when it started and ended.

    Used for blocking queries: the test starts the query, does something (or
    nothing), and then checks what the query returned and *when*.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._done = threading.Event()
        self.started = time.monotonic()
        self.ended: float | None = None
        self.value: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test by result()
            self.error = exc
        finally:
            self.ended = time.monotonic()
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float) -> Any:
        """The call's return value; raises what it raised, or fails if it is still running."""
        if not self._done.wait(timeout):
            raise AssertionError(f"the call did not return within {timeout}s")
        if self.error is not None:
            raise self.error
        return self.value

    @property
    def elapsed(self) -> float:
        assert self.ended is not None, "the call has not returned yet"
        return self.ended - self.started

