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
