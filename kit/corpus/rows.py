"""The one row rule: which values a corpus row may hold, checked wherever a corpus enters the kit.

A corpus from another box (a JSONL import, a merged .parquet, a bundle's corpus.parquet) is untrusted:
every number is hostile until checked. `ROW_RULES` says, per column, the type and the physically
possible range; `invalid_rows` applies it to a frame (vectorised, so it also runs batch by batch on a
streamed file). kit.corpus.legacy (JSONL) and kit.corpus.table (Parquet, run directories, streamed
bundle corpora) both use it, so both formats refuse the same rows. The ranges and where they come from
are in docs/corpus.md ("What a row may hold").

NaN in a score or feature column is not a range problem: it is an unscored frame, left out of training
and counted (`corpus.dropped.non_finite`); JSONL refuses it earlier as a missing value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kit.core.console import printable_short
from kit.core.schema import FEATURES, TARGET
from kit.corpus.encoders import ENCODERS, FAMILIES

# libvmaf's default enhancement gain limit for both ADM and VIF (`adm_enhn_gain_limit`,
# `vif_enhn_gain_limit`, default 100.0; the kit never changes it): the restored signal may exceed the
# reference's by at most this factor, which bounds both ratios.
ENHN_GAIN_LIMIT = 100.0
# VIF per pixel is log2(1 + g^2 s1/(sv + sn)) / log2(1 + s1/sn) with g <= ENHN_GAIN_LIMIT and s1 >= sn
# (else the pixel counts num <= 1, den 1): at most 1 + log2(g^2) = 14.3; rounded up to 15 for the
# fixed-point log table.
VIF_MAX = math.ceil(1 + 2 * math.log2(ENHN_GAIN_LIMIT))
# motion2: mean absolute difference of blurred luma between frames, in 8-bit units (libvmaf's
# integer_motion scales 10/12-bit input to the same units: at most 1023/4 = 255.75).
MOTION_MAX = 256.0
# libvmaf clips every built-in model's score to its score_clip [0, 100] (predict.c `clip`); the kit
# never passes disable_clip.
VMAF_RANGE = (0.0, 100.0)
# libvmaf numbers frames with an `unsigned` (32-bit) index.
FRAME_INDEX_MAX = 2**32 - 1
# AV1 codes frame_width_minus_1 in up to 16 bits: the largest frame any encoder in the table can write.
SIDE_MAX = 65536
# A byte count a double holds exactly (JSON numbers); 9 PB is no encode of one clip.
BYTES_MAX = 2**53

# cq: each encoder's family range (kit.corpus.encoders); an encoder the table does not know (the fork's
# corpora name others) gets the union of every family's range.
CQ_RANGES: dict[str, tuple[int, int]] = {name: e.cq_range for name, e in ENCODERS.items()}
CQ_ANY: tuple[int, int] = (min(f.cq_range[0] for f in FAMILIES.values()), max(f.cq_range[1] for f in FAMILIES.values()))


@dataclass(frozen=True)
class Rule:
    """One column's allowed values: `kind` "text" (a non-empty string), "int" or "number" in [lo, hi];
    `missing_ok`: null/NaN allowed (not measured, or an unscored frame)."""

    kind: str
    lo: float = -math.inf
    hi: float = math.inf
    missing_ok: bool = False
    source: str = ""  # where the range comes from, quoted in errors


ROW_RULES: dict[str, Rule] = {
    "src": Rule("text"),
    "encoder": Rule("text"),
    "cq": Rule("int", *CQ_ANY, source="the encoder table's cq range"),  # per encoder: `_cq_bounds`
    "frame_index": Rule("int", 0, FRAME_INDEX_MAX, source="libvmaf's 32-bit frame index"),
    "enc_bytes": Rule("int", 0, BYTES_MAX, source="a byte count"),
    "width": Rule("int", 0, SIDE_MAX, source="0 = unknown; AV1's largest frame"),
    "height": Rule("int", 0, SIDE_MAX, source="0 = unknown; AV1's largest frame"),
    "fps": Rule("number", 0, math.inf, missing_ok=True, source="a frame rate"),
    "bitrate_kbps": Rule("number", 0, math.inf, missing_ok=True, source="a bitrate"),
    "enc_time_ms": Rule("number", 0, math.inf, missing_ok=True, source="a duration"),
    "score_time_ms": Rule("number", 0, math.inf, missing_ok=True, source="a duration"),
    TARGET: Rule("number", *VMAF_RANGE, missing_ok=True, source="libvmaf clips scores to [0, 100]"),
    "adm2": Rule("number", 0, ENHN_GAIN_LIMIT, missing_ok=True, source="libvmaf's ADM ratio, enhancement gain <= 100"),
    **{f: Rule("number", 0, VIF_MAX, missing_ok=True, source="libvmaf's VIF ratio, enhancement gain <= 100")
       for f in FEATURES if f.startswith("vif_scale")},
    "motion2": Rule("number", 0, MOTION_MAX, missing_ok=True, source="mean luma difference in 8-bit units"),
}


def _cq_bounds(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """Per row: the cq range of its encoder, and what the range is called in a message."""
    known = df["encoder"].map(CQ_RANGES)
    lo = known.map(lambda r: r[0], na_action="ignore").fillna(CQ_ANY[0]).to_numpy(dtype=float)
    hi = known.map(lambda r: r[1], na_action="ignore").fillna(CQ_ANY[1]).to_numpy(dtype=float)
    label = df["encoder"].map(lambda e: f"{printable_short(str(e), 30)}'s cq range in the encoder table"
                              if e in CQ_RANGES else "every encoder's cq range in the encoder table")
    return lo, hi, label


def _numbers(values: pd.Series) -> np.ndarray:
    """Values as floats (huge Python ints stay comparable: they become inf, not an overflow)."""
    try:
        return values.to_numpy(dtype=float, na_value=np.nan)
    except (OverflowError, TypeError, ValueError):
        return np.array([_float(v) for v in values], dtype=float)


def _float(value: object) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        return math.inf if value > 0 else -math.inf  # type: ignore[operator]
    except (TypeError, ValueError):
        return math.nan


def shown(value: object) -> str:
    """A value for a one-line message: short, no control characters, huge integers named as such."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool) and abs(int(value)) > 10**30:
        return "a huge integer"
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return printable_short(repr(value) if isinstance(value, str) else str(value), 40)


@dataclass
class Violations:
    """Which rows break the rule (`mask`), and a message for any one of them (`reason(i)`)."""

    mask: np.ndarray
    reason: Callable[[int], str]

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    def positions(self) -> np.ndarray:
        return np.flatnonzero(self.mask)


def invalid_rows(df: pd.DataFrame) -> Violations:
    """Apply ROW_RULES to every column of `df` it names (others are not this rule's business)."""
    cols = [c for c in ROW_RULES if c in df.columns]
    bad: dict[str, np.ndarray] = {}
    cq = _cq_bounds(df) if "cq" in cols and "encoder" in df.columns else None
    for col in cols:
        rule, values = ROW_RULES[col], df[col]
        missing = values.isna().to_numpy()
        if rule.kind == "text":
            bad[col] = missing | (values.astype(str).str.len() == 0).to_numpy()
            continue
        x = _numbers(values)
        lo, hi = (cq[0], cq[1]) if col == "cq" and cq is not None else (rule.lo, rule.hi)
        with np.errstate(invalid="ignore"):
            out = ~((x >= lo) & (x <= hi))
        if rule.missing_ok:  # NaN and inf are the non-finite handling's business, not a range's
            out &= np.isfinite(x)
        else:
            out |= missing
        bad[col] = out
    mask = np.zeros(len(df), dtype=bool)
    for m in bad.values():
        mask |= m

    def reason(i: int) -> str:
        for col, m in bad.items():
            if m[i]:
                return _reason(df, col, i, cq)
        return ""

    return Violations(mask, reason)


def _reason(df: pd.DataFrame, col: str, i: int, cq: tuple[np.ndarray, np.ndarray, pd.Series] | None) -> str:
    rule, value = ROW_RULES[col], df[col].iloc[i]
    if rule.kind == "text":
        return f"{col} is {'null' if pd.isna(value) else shown(value)}, not a non-empty string"
    if pd.isna(value):
        return f"{col} is null, not {'an integer' if rule.kind == 'int' else 'a number'}"
    if col == "cq" and cq is not None:
        lo, hi, where = int(cq[0][i]), int(cq[1][i]), cq[2].iloc[i]
    else:
        lo, hi, where = rule.lo, rule.hi, rule.source
    span = f"{_bound(lo)}..{_bound(hi)}" if math.isfinite(hi) else f">= {_bound(lo)}"
    return f"{col} is {shown(value)}, outside {span} ({where})"


def _bound(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else f"{b:g}"
