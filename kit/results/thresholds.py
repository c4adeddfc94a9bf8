"""The gate's thresholds and verdict names, defined once (no pandas, no torch: the CLI builds its
`verdict` and `pipeline --gate-*` flags from this dataclass at import time, and `--help` stays fast).

The rule itself is `kit.results.gate.decide`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PROMOTE, HOLD = "PROMOTE", "HOLD"
VERDICTS: tuple[str, ...] = (PROMOTE, HOLD)
GATE_EPS = 1e-12  # every comparison allows this much in the passing direction (float rounding)


@dataclass(frozen=True)
class Thresholds:
    """PROMOTE iff mean of the per-seed mean PLCCs >= mean_plcc, their max - min <= plcc_spread_max, and
    every seed >= per_seed_min. `flag` is the short spelling of `verdict`'s option (besides --gate-*)."""

    mean_plcc: float = field(default=0.95, metadata={"flag": "--mean-plcc",
                                                      "help": "Minimum mean of the per-seed mean PLCCs."})
    plcc_spread_max: float = field(default=0.005, metadata={"flag": "--spread-max",
                                                             "help": "Maximum max-min of the per-seed mean PLCCs."})
    per_seed_min: float = field(default=0.95, metadata={"flag": "--per-seed-min",
                                                         "help": "Minimum mean PLCC of every seed."})


GATE_DEFAULTS: dict[str, float] = asdict(Thresholds())
