"""Where the kit talks: stderr for progress and messages, stdout for results (tables, --json).

`Progress` is the one progress display of every long step (corpus cells, training epochs, export
fits, reference bytes): a rich bar with ETA for a person at a terminal, plain lines otherwise.

`printable` is the one escaping of text the kit did not write itself (member names, source and encoder
names, values from a bundle's JSON, error messages that quote them): every line the kit prints passes
through it, so no control character reaches a terminal and nothing splits a line; `printable_short`
is the same for a value quoted inside a message (cut to a length first).
"""

from __future__ import annotations

import os
import sys
import unicodedata
from types import TracebackType

from rich import progress as rp
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

# Controls (C0, DEL, C1: ESC starts a terminal escape, CSI 0x9b is one on its own), format characters
# (bidi overrides that reorder what is shown, zero-width characters), unpaired surrogates (bytes that
# were not UTF-8) and line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _escape_char(c: str) -> str:
    code = ord(c)
    if code > 0xFFFF:  # a surrogate pair, so the escape is also valid inside a JSON string
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """`text` with every control, format or separator character written as a `\\uXXXX` escape.

    One line stays one line, and nothing in it can recolour, move or clear the terminal. The escapes
    are valid inside JSON strings too, so `--json` output goes through here with `keep_newlines=True`
    (json.dumps has already escaped the newlines inside strings; the ones left are its layout).
    """
    text = str(text)
    if text.isprintable() and text.isascii():
        return text
    return "".join(c if (keep_newlines and c == "\n") or unicodedata.category(c) not in _UNSAFE_CATEGORIES
                   else _escape_char(c) for c in text)


def printable_short(text: object, limit: int = 80) -> str:
    """An untrusted value quoted inside a message: cut to `limit` characters (ending in "..."), then
    `printable`, so a long or hostile value neither floods nor splits the line."""
    text = str(text)
    return printable(text if len(text) <= limit else text[: limit - 3] + "...")


def progress_enabled(quiet: bool = False) -> bool:
    """Progress bars only for a person at a terminal (not CI logs, not --quiet)."""
    return not quiet and sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(printable(message))}")


def info(message: str) -> None:
    err.print(printable(message), markup=False)


class Progress:
    """One progress display for every long step.

    At a terminal: a rich bar with ETA (`unit="bytes"` shows sizes and a transfer rate). Elsewhere (CI
    logs, pipes): `tick` prints a line every 20%, `advance` one line per finished item, so logs show
    life without flooding. `quiet` silences both. `note` prints a line above the bar.
    """

    def __init__(self, label: str, *, quiet: bool = False, unit: str = "", transient: bool = False) -> None:
        self.label, self.quiet, self.unit = label, quiet, unit
        self.total = 0
        self.done = 0
        self._last_pct = -1
        self._task: rp.TaskID | None = None
        self._bar: rp.Progress | None = None
        if progress_enabled(quiet):
            columns: list[rp.ProgressColumn | str] = [rp.TextColumn("{task.description}"), rp.BarColumn()]
            if unit == "bytes":
                columns += [rp.DownloadColumn(), rp.TransferSpeedColumn()]
            else:
                columns.append(rp.MofNCompleteColumn())
                if unit:
                    columns.append(rp.TextColumn(unit))
                columns += [rp.TextColumn("{task.fields[last]}"), rp.TimeElapsedColumn(), rp.TextColumn("ETA")]
            columns.append(rp.TimeRemainingColumn())
            self._bar = rp.Progress(*columns, console=err, transient=transient)

    def plan(self, total: int) -> None:
        self.total = total
        if self._bar is not None and self._task is None:
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=max(total, 1), last="")

    def tick(self, done: int, total: int | None = None, last: str = "") -> None:
        """`done` of `total` finished (absolute counts)."""
        total = total or self.total or 1
        self.done = done
        if self._task is None and self._bar is not None:
            self.plan(total)
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=done, total=total, last=last)
        elif not self.quiet:
            pct = int(100 * done / total) // 20 * 20
            if pct != self._last_pct:
                self._last_pct = pct
                err.print(printable(f"      {self.label}: {done}/{total}{' ' + self.unit if self.unit else ''}"), markup=False)

    def advance(self, amount: int, item: str = "") -> None:
        """`item` finished, worth `amount` (e.g. its bytes) of the planned total."""
        self.done += amount
        if self._task is None and self._bar is not None:
            self.plan(self.total)
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=amount, description=escape(printable(f"{self.label} {item}".rstrip())))
        elif not self.quiet and item:
            err.print(printable(f"  {self.label}: {item} done"), markup=False)

    def note(self, text: str) -> None:
        """A line of its own above the bar (e.g. a failed cell), unless quiet."""
        if not self.quiet:
            err.print(printable(text), markup=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
