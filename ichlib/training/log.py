"""How a training run reports: progress bars and one line per epoch, through one object.

Every loop takes a :class:`RunLog` instead of a ``progress`` flag. Subclass it to send the
lines elsewhere, or pass ``on_epoch_end`` to be called after each epoch's files are written
(raising there stops the run, which is how the tests interrupt one).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tqdm.auto import tqdm


@dataclass
class RunLog:
    """Progress bars and messages of one training run.

    Attributes:
        progress: Print one line per epoch and show progress bars.
        on_epoch_end: Called as ``on_epoch_end(epochs_done, history_row)`` after each epoch.
        main: Whether this process reports (False on the other ranks under ``torchrun``).
    """

    progress: bool = True
    on_epoch_end: Callable[[int, dict], None] | None = None
    main: bool = True

    @property
    def bars(self) -> bool:
        """Bars are drawn when reporting, ``TQDM_DISABLE`` is unset, and someone watches:
        stderr is a terminal or the code runs in a Jupyter kernel (not in a redirected log)."""
        disabled = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
        watched = sys.stderr.isatty() or "ipykernel" in sys.modules
        return self.progress and self.main and not disabled and watched

    def bar(self, iterable: Iterable, total: int | None = None, desc: str = "") -> tqdm:
        """``iterable`` wrapped in a progress bar (disabled, but still a tqdm, when not shown,
        so a loader is read the same way either way)."""
        return tqdm(iterable, total=total, desc=desc, leave=False, disable=not self.bars)

    def info(self, text: str) -> None:
        """Print one line when reporting."""
        if self.progress and self.main:
            print(text, flush=True)

    def epoch(self, epochs_done: int, row: dict, line: str) -> None:
        """Report an epoch's line, then call :attr:`on_epoch_end`."""
        self.info(line)
        if self.on_epoch_end is not None:
            self.on_epoch_end(epochs_done, row)

    def for_rank(self, is_main: bool) -> RunLog:
        """This log for a process that reports (rank 0) or stays quiet."""
        return dataclasses.replace(self, main=self.main and is_main)


#: A log that reports nothing.
QUIET = RunLog(progress=False)
