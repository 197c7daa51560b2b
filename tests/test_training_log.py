"""RunLog: one object for progress bars and per-epoch lines."""

from __future__ import annotations

import io
import sys

from ichlib.training.log import QUIET, RunLog


class _Terminal:
    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def test_lines_are_printed_only_when_reporting(capsys):
    RunLog(progress=True).info("shown")
    RunLog(progress=False).info("hidden")
    RunLog(progress=True).for_rank(False).info("another rank")
    QUIET.info("quiet")
    assert capsys.readouterr().out == "shown\n"


def test_epoch_reports_then_calls_the_hook(capsys):
    seen = []
    log = RunLog(progress=True, on_epoch_end=lambda n, row: seen.append((n, row["loss"])))
    log.epoch(2, {"loss": 0.5}, "epoch 2 done")
    assert capsys.readouterr().out == "epoch 2 done\n" and seen == [(2, 0.5)]


def test_bars_only_for_someone_watching(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert RunLog(progress=True).bars
    assert not RunLog(progress=False).bars and not RunLog(progress=True).for_rank(False).bars
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not RunLog(progress=True).bars
    monkeypatch.delenv("TQDM_DISABLE")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a redirected log
    assert not RunLog(progress=True).bars


def test_a_disabled_bar_still_iterates_everything():
    assert list(QUIET.bar(range(5), desc="x")) == [0, 1, 2, 3, 4]
