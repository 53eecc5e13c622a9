"""Console progress bars (psgfm.progress): on the process's original stderr, never the log."""

from __future__ import annotations

import io
import sys

from psgfm import progress as P


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_bar_goes_to_the_original_stderr_when_it_is_a_terminal(monkeypatch):
    console, log = _Tty(), io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", console)
    monkeypatch.setattr(sys, "stderr", log)  # what log_to_file does in a rule script
    monkeypatch.delenv("PSGFM_PROGRESS", raising=False)
    assert sum(P.progress(range(7), desc="atlas batch", unit="phecode")) == 21
    text = console.getvalue()
    assert "atlas batch" in text and "7/7" in text and "phecode" in text
    assert log.getvalue() == ""


def test_no_bar_without_a_terminal_unless_forced(monkeypatch):
    plain = io.StringIO()  # CI, a pipe, a file: no carriage returns there
    monkeypatch.setattr(sys, "__stderr__", plain)
    monkeypatch.delenv("PSGFM_PROGRESS", raising=False)
    bar = P.progress(total=3, desc="pretrain", unit="step")
    bar.update(3)
    bar.close()
    assert plain.getvalue() == ""
    monkeypatch.setenv("PSGFM_PROGRESS", "1")
    assert list(P.progress([1, 2], desc="embed")) == [1, 2]
    assert "embed" in plain.getvalue() and "2/2" in plain.getvalue()
    tty = _Tty()
    monkeypatch.setattr(sys, "__stderr__", tty)
    monkeypatch.setenv("PSGFM_PROGRESS", "0")
    list(P.progress([1], desc="off"))
    assert tty.getvalue() == ""
