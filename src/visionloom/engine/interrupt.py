"""Ctrl-C during training: held while the weights are being updated, then reported with what was saved.

Kept apart from the trainer so that the CLI can recognise `TrainingInterrupted` without importing
torch (which every command, `--help` included, would otherwise pay for at start-up).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after whatever could be saved consistently was saved."""

    def __init__(self, step: int, saved: Path | None, resume_from: int | None, message: str):
        super().__init__(message)
        self.step, self.saved, self.resume_from, self.message = step, saved, resume_from, message


class DeferredInterrupt:
    """Ctrl-C raises at once, except inside `critical()` (the optimizer's update of the weights),
    where it is held until the block ends, so a checkpoint never holds half-updated weights.

    A process started with SIGINT ignored (`nohup`, a background job of a script) keeps ignoring
    it here too: otherwise it would stop on SIGINT while training and not while evaluating."""

    def __init__(self):
        self.inside, self.pending, self.previous = False, False, None

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is not threading.main_thread():
            return self
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *_exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, _signum, _frame) -> None:
        if self.inside:
            self.pending = True
        else:
            raise KeyboardInterrupt

    @contextmanager
    def critical(self) -> Iterator[None]:
        self.inside = True
        try:
            yield
        finally:
            self.inside = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt
