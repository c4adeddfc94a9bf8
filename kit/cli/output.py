"""The one way a command prints its result: `emit(result, as_json, text=...)`.

JSON goes to stdout through click.echo as canonical JSON (sorted keys, NaN/inf as null) and never
through rich, whose markup would eat `[b]` in a source name. Text lines go out through click.echo too
(stdout for results, stderr for what is only commentary); rich renderables (tables) are printed by
rich. Every string passes `kit.core.console.printable` first: results quote names and values from
untrusted files, and no control character may reach the terminal or split a line, in text or JSON.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import click
from rich.console import RenderableType

from kit.core.console import out, printable
from kit.core.fsio import canonical_json, json_safe


def emit(result: Any, as_json: bool = False, *, text: Iterable[str | RenderableType] | str = ()) -> None:
    """Print `result` as JSON on stdout (`as_json`), else print `text` there (lines and/or rich renderables)."""
    if as_json:
        click.echo(printable(canonical_json(json_safe(result)), keep_newlines=True), nl=False)
        return
    for item in [text] if isinstance(text, str) else text:
        if isinstance(item, str):
            click.echo(printable(item))
        else:
            out.print(item)


def note(line: str) -> None:
    """A line of commentary on stderr (never markup), beside a command's result."""
    click.echo(printable(line), err=True)
