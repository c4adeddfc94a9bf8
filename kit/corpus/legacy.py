"""The old bash kit's per-frame JSONL format: read it into our corpus layout, write ours back to it.

(`kit.corpus.table` uses this for `corpus import`, `corpus export` and `merge`.)

Old rows carry only `src, encoder, cq, enc_bytes, enc_time_ms, frame_index, vmaf, adm2, vif_scale0..3,
motion2`. What they lack is filled so nobody mistakes it for a measurement: `src_sha256` becomes
`name:<src>` (not a content hash; the old kit never hashed its sources), geometry 0 / "", timings NaN,
platform "legacy". The old kit appended duplicate rows on re-runs, so exact duplicates are dropped
(and counted); conflicting duplicates are reported, never hidden.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kit.core.errors import BadInput
from kit.core.fsio import atomic_open
from kit.core.ids import KEY_LEN, short_id
from kit.core.schema import CORPUS_COLUMNS, LEGACY_JSONL_COLUMNS

LEGACY_INT = ("cq", "enc_bytes", "frame_index")


def _legacy_row(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise BadInput(f"{where}: not a JSON object", hint="each line of an old-kit corpus is one JSON object")
    missing = [c for c in LEGACY_JSONL_COLUMNS if c not in obj]
    if missing:
        raise BadInput(f"{where}: lacks {', '.join(missing)}",
                       hint=f"old-kit rows need {', '.join(LEGACY_JSONL_COLUMNS)}")
    row: dict[str, Any] = {}
    try:
        for c in LEGACY_JSONL_COLUMNS:
            v = obj[c]
            row[c] = str(v) if c in ("src", "encoder") else int(v) if c in LEGACY_INT else float(v)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{where}: bad value ({exc})", hint="fix or drop that line") from None
    return row


def read_jsonl(paths: Sequence[Path]) -> pd.DataFrame:
    """Old-kit JSONL files -> rows with CORPUS_COLUMNS (missing fields filled, see module doc)."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"cannot read {path}: {exc}", hint="check the path") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise BadInput(f"{path}:{n}: not valid JSON", hint="the file is truncated or not JSONL") from None
            rows.append(_legacy_row(obj, f"{path}:{n}"))
    if not rows:
        raise BadInput(f"no rows in {', '.join(map(str, paths))}", hint="pass the old kit's per-frame .jsonl")
    df = pd.DataFrame(rows)
    df["src_sha256"] = "name:" + df["src"]
    for col, fill in {"width": 0, "height": 0, "pix_fmt": "", "fps": math.nan, "quality_arg": "", "preset": "",
                      "bitrate_kbps": math.nan, "score_time_ms": math.nan, "platform": "legacy", "box_id": "",
                      "ffmpeg_version": "", "libvmaf_version": "", "vmaf_model": "", "env_fingerprint": ""}.items():
        df[col] = fill
    df["cell_id"] = [short_id(f"legacy|{s}|{e}|{q}", KEY_LEN)
                     for s, e, q in zip(df["src"], df["encoder"], df["cq"], strict=True)]
    return df[list(CORPUS_COLUMNS)].astype(CORPUS_COLUMNS)


def write_jsonl(df: pd.DataFrame, out: Path) -> int:
    """Rows (in the order given) -> JSONL with exactly the old kit's columns, atomically; -> rows."""
    cols = list(LEGACY_JSONL_COLUMNS)
    with atomic_open(out, "w") as fh:
        for rec in df[cols].to_dict("records"):
            fh.write(json.dumps({c: (int(rec[c]) if c in LEGACY_INT else rec[c]) for c in cols}) + "\n")
    return len(df)
