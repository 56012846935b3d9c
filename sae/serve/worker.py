"""One thread that runs the model, fed by a bounded queue: requests never run the model at once, never pile up.

A torch model on a laptop's CPU is fastest one request at a time (each forward already uses every core), and a
`ModelAdapter`'s edits are installed on the model itself, so two requests steering at once would see each
other's edits. So every computation goes through this one worker; when `queue_size` are waiting, `submit`
refuses at once (`Busy`, the server's 503) rather than letting waits grow without bound.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["Busy", "ModelWorker"]


class Busy(Exception):
    """The queue is full."""


class ModelWorker:
    """Runs submitted callables one at a time, in submission order, on its own thread."""

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self._jobs: deque[tuple[Future, Callable[[], Any]]] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sae-serve-model", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Queue `fn`; its future holds the result or the exception. Raises `Busy` when `queue_size` jobs wait
        (jobs whose request gave up, their future cancelled, hold no place)."""
        fut: Future = Future()
        with self._ready:
            if self._closed:
                raise Busy("the server is shutting down")
            live = [job for job in self._jobs if not job[0].cancelled()]
            if len(live) >= self.queue_size:
                raise Busy(f"{self.queue_size} requests are already waiting for the model")
            self._jobs.clear()
            self._jobs.extend(live)
            self._jobs.append((fut, fn))
            self._ready.notify()
        return fut

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                fut, fn = self._jobs.popleft()
            if not fut.set_running_or_notify_cancel():  # its request gave up waiting
                continue
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the request that asked
                fut.set_exception(e)

    def close(self, timeout: float = 10.0) -> None:
        """Finish the running job, cancel the waiting ones, stop the thread."""
        with self._ready:
            self._closed = True
            for fut, _ in self._jobs:
                fut.cancel()
            self._jobs.clear()
            self._ready.notify()
        self._thread.join(timeout)
