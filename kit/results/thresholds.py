"""The gate's thresholds and verdict names, defined once (no pandas, no torch: the CLI builds its
`verdict` and `pipeline --gate-*` flags from this dataclass at import time, and `--help` stays fast).

The rule itself is `kit.results.gate.decide`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

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
            lo, hi = f.metadata["range"]
            value = getattr(self, f.name)
            if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                    and lo <= value <= hi):
                raise BadInput(f"gate threshold {f.metadata['flag']} (--gate-{f.name.replace('_', '-')}): {value!r} "
                               f"is not a number from {lo:g} to {hi:g}", hint=f"the default is {f.default}")


GATE_DEFAULTS: dict[str, float] = asdict(Thresholds())

# The key each threshold has in a recorded gate (verdict.json's `gate`, written by kit.results.gate.decide).
RECORDED_AS: dict[str, str] = {"mean_plcc": "mean_plcc_threshold", "plcc_spread_max": "plcc_spread_max",
                               "per_seed_min": "per_seed_min"}


def recorded_thresholds(gate: dict[str, object]) -> dict[str, object]:
    """{threshold name: value} as a recorded gate states them (values unchecked: it may be untrusted)."""
    return {name: gate.get(key) for name, key in RECORDED_AS.items()}
