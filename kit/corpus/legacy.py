"""Per-frame JSONL: the fork's corpus format (and the old bash kit's), read row by row and written losslessly.

(`kit.corpus.table` uses this for `corpus import`, `corpus export`, `merge` and `train --corpus X.jsonl`.)

Reading: a row needs the fork trainer's keys (`REQUIRED_KEYS`: src, encoder, cq, frame_index, vmaf and
the six features). Every other corpus column is read back when present (our own export writes them
all, so export -> import is lossless: same corpus hash) and filled when absent so nobody mistakes it for
a measurement: `src_sha256` becomes `name:<src>` (not a content hash; the fork and the old kit never
hashed their sources), `enc_bytes` 0, geometry 0 / "", timings NaN, platform "legacy".

Every value is checked: a score or feature that is null, not a number, a boolean or not finite; a cq or
frame index that is not an integer (22.7, true, 1e400); a missing key; a value the row rule
(`kit.corpus.rows`, the same one .parquet corpora meet) puts out of range: each is one invalid row,
reported with its file:line. By default the first one is an error (exit 2) saying how many there are;
`drop_invalid` skips them and counts them instead.

Writing: one object per row, the fork trainer's keys first (so the fork can train on our export as is),
then every other corpus column; floats as Python's shortest round-trip repr, NaN as null.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kit.core.console import printable_short
from kit.core.errors import BadInput
from kit.core.fsio import JSONProblem, atomic_open, parse_json
from kit.core.ids import KEY_LEN, short_id
from kit.core.schema import CORPUS_COLUMNS, FEATURES, LEGACY_JSONL_COLUMNS, TARGET
from kit.corpus import rows as row_rule

# What the fork's trainer requires of a row (and so do we); the rest of CORPUS_COLUMNS is optional.
REQUIRED_KEYS: tuple[str, ...] = ("src", "encoder", "cq", "frame_index", TARGET, *FEATURES)
# Written first, in the old kit's order (the fork's generator writes the same keys).
FIRST_KEYS: tuple[str, ...] = LEGACY_JSONL_COLUMNS
KEY_ORDER: tuple[str, ...] = (*FIRST_KEYS, *(c for c in CORPUS_COLUMNS if c not in FIRST_KEYS))
NUMBER_KEYS: tuple[str, ...] = (TARGET, *FEATURES)  # must be finite numbers
INT_LIMIT = 2**62  # keeps int64 safe; the row rule (kit.corpus.rows) says what is plausible
# Filled when a row does not have the column (None = computed: src_sha256, cell_id).
DEFAULTS: dict[str, Any] = {"src_sha256": None, "enc_bytes": 0, "enc_time_ms": math.nan, "width": 0, "height": 0,
                            "pix_fmt": "", "fps": math.nan, "quality_arg": "", "preset": "", "bitrate_kbps": math.nan,
                            "score_time_ms": math.nan, "platform": "legacy", "box_id": "", "ffmpeg_version": "",
                            "libvmaf_version": "", "vmaf_model": "", "env_fingerprint": "", "cell_id": None}
EXAMPLES = 5  # invalid rows quoted in an error or a report
FIX_HINT = "fix or remove those lines, or pass --drop-invalid to skip and count them"


class InvalidRow(ValueError):
    """One row that cannot be a corpus row; the message says which key and why."""


@dataclass
class InvalidRows:
    """Rows skipped with --drop-invalid: how many, and the first few as `file:line: reason`."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def to_dict(self) -> dict[str, Any]:
        return {"invalid_rows_dropped": self.count, "invalid_row_examples": list(self.examples)}


def _integer(obj: dict[str, Any], key: str) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRow(f"{key} is {_shown(value)}, not an integer")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise InvalidRow(f"{key} is {_shown(value)}, not an integer")
    if not -INT_LIMIT <= value <= INT_LIMIT:
        rule = row_rule.ROW_RULES.get(key)
        span = f", outside {rule.lo:.0f}..{rule.hi:.0f} ({rule.source})" if rule else ", out of range"
        raise InvalidRow(f"{key} is {_shown(value)}{span}")
    return int(value)


def _number(obj: dict[str, Any], key: str, *, optional: bool = False) -> float:
    value = obj[key]
    if value is None and optional:
        return math.nan
    try:
        ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        ok = False
    if not ok:
        raise InvalidRow(f"{key} is {_shown(value)}, not a finite number")
    return float(value)


def _text(obj: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = obj[key]
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise InvalidRow(f"{key} is {_shown(value)}, not {'a non-empty' if required else 'a'} string")
    return value


def _shown(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return "a huge integer"
    return printable_short("null" if value is None else json.dumps(value) if isinstance(value, bool | str) else repr(value),
                           40)


def parse_row(obj: Any) -> dict[str, Any]:
    """One JSON object -> a corpus row (CORPUS_COLUMNS), or InvalidRow saying what is wrong."""
    if not isinstance(obj, dict):
        raise InvalidRow("not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise InvalidRow(f"lacks {', '.join(missing)}")
    row: dict[str, Any] = {"src": _text(obj, "src", required=True), "encoder": _text(obj, "encoder", required=True),
                           "cq": _integer(obj, "cq"), "frame_index": _integer(obj, "frame_index")}
    for key in NUMBER_KEYS:
        row[key] = _number(obj, key)
    for key, default in DEFAULTS.items():
        if key not in obj:
            row[key] = default
        elif CORPUS_COLUMNS[key] == "int64":
            row[key] = _integer(obj, key)
        elif CORPUS_COLUMNS[key] == "float64":
            row[key] = _number(obj, key, optional=True)
        else:
            row[key] = _text(obj, key)
    if row["src_sha256"] is None:
        row["src_sha256"] = f"name:{row['src']}"
    if row["cell_id"] is None:
        row["cell_id"] = short_id(f"legacy|{row['src']}|{row['encoder']}|{row['cq']}", KEY_LEN)
    return row


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    yield n, line
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read {path}: {exc}", hint="pass a per-frame .jsonl file (UTF-8, one object per line)") from None


def read_jsonl(paths: Sequence[Path], *, drop_invalid: bool = False) -> tuple[pd.DataFrame, InvalidRows]:
    """JSONL files -> (rows with CORPUS_COLUMNS, the invalid rows skipped). Without `drop_invalid` an invalid
    row is bad input naming its file:line (and how many more there are)."""
    rows: list[dict[str, Any]] = []
    lines: list[tuple[int, int]] = []  # (file, line) of each parsed row
    problems: list[tuple[int, int, str]] = []  # (file, line, reason), in file order once sorted
    for f, path in enumerate(paths):
        for n, line in _lines(Path(path)):
            try:
                try:
                    obj = parse_json(line)
                except JSONProblem as exc:
                    raise InvalidRow(f"not valid JSON ({exc}; truncated line?)") from None
                rows.append(parse_row(obj))
                lines.append((f, n))
            except InvalidRow as exc:
                problems.append((f, n, str(exc)))
    if rows:  # the row rule (ranges), on every parsed row at once
        found = row_rule.invalid_rows(pd.DataFrame(rows))
        for i in found.positions():
            problems.append((*lines[i], found.reason(int(i))))
        rows = [r for r, bad in zip(rows, found.mask, strict=True) if not bad]
    invalid = InvalidRows()
    for f, n, reason in sorted(problems):
        invalid.add(f"{paths[f]}:{n}", reason)
    if invalid.count and not drop_invalid:
        more = f" (and {invalid.count - 1} more invalid row(s): {'; '.join(invalid.examples[1:])})" if invalid.count > 1 else ""
        raise BadInput(f"{invalid.examples[0]}{more}", hint=FIX_HINT)
    if not rows:
        raise BadInput(f"no rows in {', '.join(map(str, paths))}", hint="pass a per-frame .jsonl (one object per line)")
    df = pd.DataFrame(rows)
    return df[list(CORPUS_COLUMNS)].astype(CORPUS_COLUMNS), invalid


def _value(value: Any, kind: str) -> Any:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if kind == "int64":
        return int(value)
    if kind == "float64":
        value = float(value)
        return value if math.isfinite(value) else None
    return str(value)


def jsonl_lines(df: pd.DataFrame) -> Iterable[str]:
    """Rows (in the order given) -> JSONL lines, every corpus column the frame has, FIRST_KEYS first."""
    cols = [c for c in KEY_ORDER if c in df.columns]
    kinds = [CORPUS_COLUMNS[c] for c in cols]
    for values in zip(*(df[c].tolist() for c in cols), strict=True):
        yield json.dumps({c: _value(v, k) for c, v, k in zip(cols, values, kinds, strict=True)}) + "\n"


def write_jsonl(df: pd.DataFrame, out: Path) -> int:
    """Rows (in the order given) -> JSONL, atomically; -> rows."""
    with atomic_open(out, "w") as fh:
        fh.writelines(jsonl_lines(df))
    return len(df)


def jsonl_sha256(df: pd.DataFrame) -> str:
    """sha256 of the bytes `write_jsonl` writes for these rows."""
    h = hashlib.sha256()
    for line in jsonl_lines(df):
        h.update(line.encode("utf-8"))
    return h.hexdigest()
