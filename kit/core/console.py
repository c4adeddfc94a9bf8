"""One stderr console for progress and messages; stdout is kept for results (tables, --json)."""

from __future__ import annotations

import os
import sys

from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def progress_enabled(quiet: bool = False) -> bool:
    """Progress bars only for a person at a terminal (not CI logs, not --quiet)."""
    return not quiet and sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}")


def info(message: str) -> None:
    err.print(message)


class Progress:
    """One progress display for every long step: a rich bar with ETA for a person at a terminal,
    otherwise a line every 20% so CI logs show life without flooding. `quiet` silences both."""

    def __init__(self, label: str, *, quiet: bool = False, unit: str = "", transient: bool = False) -> None:
        self.label, self.quiet = label, quiet
        self.total = 0
        self._last_pct = -1
        self._task = None
        self._bar = None
        if progress_enabled(quiet):
            from rich import progress as rp

            columns = [rp.TextColumn(label), rp.BarColumn(), rp.MofNCompleteColumn()]
            if unit:
                columns.append(rp.TextColumn(unit))
            columns += [rp.TextColumn("{task.fields[last]}"), rp.TimeElapsedColumn(), rp.TextColumn("ETA"),
                        rp.TimeRemainingColumn()]
            self._bar = rp.Progress(*columns, console=err, transient=transient)

    def plan(self, total: int) -> None:
        self.total = total
        if self._bar is not None and self._task is None:
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=max(total, 1), last="")

    def tick(self, done: int, total: int | None = None, last: str = "") -> None:
        total = total or self.total or 1
        if self._task is None and self._bar is not None:
            self.plan(total)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, last=last)
        elif not self.quiet:
            pct = int(100 * done / total) // 20 * 20
            if pct != self._last_pct:
                self._last_pct = pct
                err.print(f"      {self.label}: {done}/{total}", markup=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
