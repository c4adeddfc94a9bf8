"""The gate's thresholds and verdict names, defined once (no pandas, no torch: the CLI builds its
`verdict` and `pipeline --gate-*` flags from this dataclass at import time, and `--help` stays fast).

The rule itself is `kit.results.gate.decide`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

from kit.core.console import printable_short
from kit.core.errors import BadInput

PROMOTE, HOLD = "PROMOTE", "HOLD"
VERDICTS: tuple[str, ...] = (PROMOTE, HOLD)
GATE_EPS = 1e-12  # every comparison allows this much in the passing direction (float rounding)


@dataclass(frozen=True)
class Thresholds:
    """PROMOTE iff mean of the per-seed mean PLCCs >= mean_plcc, their max - min <= plcc_spread_max, and
    every seed >= per_seed_min. `flag` is the short spelling of `verdict`'s option (besides --gate-*)."""

    mean_plcc: float = field(default=0.95, metadata={"flag": "--mean-plcc", "range": (-1.0, 1.0),
                                                      "help": "Minimum mean of the per-seed mean PLCCs."})
    plcc_spread_max: float = field(default=0.005, metadata={"flag": "--spread-max", "range": (0.0, 2.0),
                                                             "help": "Maximum max-min of the per-seed mean PLCCs."})
    per_seed_min: float = field(default=0.95, metadata={"flag": "--per-seed-min", "range": (-1.0, 1.0),
                                                         "help": "Minimum mean PLCC of every seed."})

    def __post_init__(self) -> None:
        """A threshold outside its range (or NaN, which no comparison passes) is bad input naming its flag."""
        for f in fields(self):
            problem = threshold_problem(f.name, getattr(self, f.name))
            if problem:
                raise BadInput(f"gate threshold {f.metadata['flag']} (--gate-{f.name.replace('_', '-')}): {problem}",
                               hint=f"the default is {f.default}")


def threshold_problem(name: str, value: object) -> str | None:
    """Why `value` cannot be the threshold `name` (None when it can): a finite number (not a bool) in the
    field's range. The one rule for flags and for thresholds read from files someone else wrote."""
    lo, hi = Thresholds.__dataclass_fields__[name].metadata["range"]
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and lo <= value <= hi:
        return None
    return f"{printable_short(repr(value), 40)} is not a number from {lo:g} to {hi:g}"


GATE_DEFAULTS: dict[str, float] = asdict(Thresholds())

# The key each threshold has in a recorded gate (verdict.json's `gate`, written by kit.results.gate.decide).
RECORDED_AS: dict[str, str] = {"mean_plcc": "mean_plcc_threshold", "plcc_spread_max": "plcc_spread_max",
                               "per_seed_min": "per_seed_min"}


def recorded_thresholds(gate: dict[str, object]) -> dict[str, object]:
    """{threshold name: value} as a recorded gate states them (values unchecked: it may be untrusted)."""
    return {name: gate.get(key) for name, key in RECORDED_AS.items()}


def checked_thresholds(values: Mapping[str, object], where: str, keys: Mapping[str, str] | None = None) -> Thresholds:
    """Thresholds read from a file (a bundle's verdict.json gate, a run's loso/summary.json): untrusted, so
    every value is range-checked as the flags are; a missing or bad one is bad input naming `where` and
    its key (`keys`: the name each threshold has in that file, default its field name)."""
    for name in GATE_DEFAULTS:
        key = (keys or {}).get(name, name)
        problem = "missing" if name not in values else threshold_problem(name, values[name])
        if problem:
            raise BadInput(f"{where}: gate threshold {key} {problem}",
                           hint="the file was edited or damaged; ask for the original, or pass the thresholds yourself "
                                "(--mean-plcc, --spread-max, --per-seed-min)")
    return Thresholds(**{name: float(values[name]) for name in GATE_DEFAULTS})  # type: ignore[arg-type]
