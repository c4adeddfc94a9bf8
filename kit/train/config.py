"""Every training hyperparameter in one dataclass: the defaults ARE the model the consumers expect.

Each field is a CLI flag (`--epochs`, `--lr`, ...: `kit.cli.options.train_config_options` makes one
per field, with the field's `help`), and the whole config is recorded in the LOSO summary, the verdict
and every model sidecar, so a result always says how it was trained. Adding a field adds its flag.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from kit.core.console import warn
from kit.core.errors import BadInput
from kit.train.codec import DEFAULT_VOCAB, VOCABS

MAX_HIDDEN = 4096  # wider than any useful regressor of six features; guards the memory of a typo


@dataclass(frozen=True)
class TrainConfig:
    hidden: int = field(default=64, metadata={"help": "Width of both hidden layers (MLP: in -> hidden -> hidden -> 1)."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout after each GELU (exact, erf) activation."})
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate."})
    weight_decay: float = field(default=1e-5, metadata={
        "help": "Adam L2 weight decay (added to the gradient, as torch.optim.Adam does)."})
    beta1: float = field(default=0.9, metadata={"help": "Adam beta1."})
    beta2: float = field(default=0.999, metadata={"help": "Adam beta2."})
    eps: float = field(default=1e-8, metadata={"help": "Adam epsilon."})
    batch_size: int = field(default=32, metadata={"help": "Rows per step (the last batch of an epoch is partial)."})
    epochs: int = field(default=200, metadata={"help": "Training epochs per model."})
    codec_vocab: str = field(default=DEFAULT_VOCAB, metadata={
        "help": "Encoder vocabulary of the codec block: v2 (the production ensemble's, 14 columns, other "
                "encoders -> 'unknown') or v3 (ADR-0302, 18 columns, no 'unknown' slot).",
        "choices": tuple(VOCABS)})
    # Model groups trained side by side, one Python thread each; 0 = one per core. Results do not
    # depend on it (each model's arithmetic is independent of its group). Its flag is -j/--jobs, like
    # every "how many at once" flag of the kit (--workers is the old spelling).
    workers: int = field(default=0, metadata={
        "flag": ("-j", "--jobs", "--workers"),
        "help": "Model groups trained side by side, 0 = one per core; results do not depend on it "
                "(--workers: the old name)."})
    # torch intra-op threads; FIXED (not "all cores") so results are byte-identical. 1 is also the
    # fastest here: the batched step is many small ops, and a second OpenMP thread on a busy box makes
    # every op wait for it (measured 3 ms vs 20-50 ms per step on a shared 2-core box).
    threads: int = field(default=1, metadata={"help": "Torch threads, fixed for reproducibility."})

    def __post_init__(self) -> None:
        # NaN passes no comparison below, so every float must also be finite; ints must be real ints
        # (a JSON or Python caller can hand in anything).
        checks = {
            "hidden": lambda v: 1 <= v <= MAX_HIDDEN,
            "dropout": lambda v: 0.0 <= v < 1.0,
            "lr": lambda v: v > 0,
            "weight_decay": lambda v: v >= 0,
            "beta1": lambda v: 0 <= v < 1,
            "beta2": lambda v: 0 <= v < 1,
            "eps": lambda v: v > 0,
            "batch_size": lambda v: v >= 1,
            "epochs": lambda v: v >= 1,
            "threads": lambda v: v >= 1,
            "workers": lambda v: v >= 0,
            "codec_vocab": lambda v: v in VOCABS,
        }
        for f in fields(self):
            value = getattr(self, f.name)
            kind = type(f.default)
            if kind is float:
                typed = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            else:
                typed = isinstance(value, kind) and not isinstance(value, bool)
            if not typed or not checks[f.name](value):
                raise BadInput(f"{flag_of(f.name)}: {value!r} is out of range", hint="see `ensemble-kit train --help`")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """Apply CLI overrides; None means 'not given' so the default stays."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def flag_of(name: str) -> str:
    """The command-line flag of a TrainConfig field (`--epochs`; `--jobs` for workers)."""
    flag = next(f for f in fields(TrainConfig) if f.name == name).metadata.get("flag")
    return next(x for x in flag if x.startswith("--")) if flag else f"--{name.replace('_', '-')}"


DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
# Seeds are numpy SeedSequence entropy and int64 columns; a uint32 is what every seed-taking tool accepts.
MAX_SEED = 2**32 - 1
# More seeds than this is a typo (0-100000), not an ensemble; what fits in memory is checked separately
# (kit.train.batched.check_memory).
MAX_SEEDS = 10_000
# Training settings that change speed, not results (the trainer guarantees it): a resume may change
# them, and two runs that differ only in them are the same training.
RESULT_NEUTRAL_TRAIN: tuple[str, ...] = ("workers",)


def result_train_config(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded TrainConfig dict without the fields that cannot change a number."""
    return {k: v for k, v in config.items() if k not in RESULT_NEUTRAL_TRAIN}


# The key under which loso/summary.json carries the gate thresholds a `train --corpus RUN|BUNDLE` took from
# that run (kit.results.bundle.recorded_gate), for a later `verdict` on the new run. Absent otherwise.
SUMMARY_GATE_KEY = "gate_thresholds"


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2' or '0-4' -> sorted unique seeds; `--seeds` is authoritative (never silently replaced)."""
    seeds: set[int] = set()
    given = 0
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            lo_text, _, hi_text = part.partition("-") if "-" in part[1:] else (part, "", part)
            lo, hi = int(lo_text), int(hi_text)
            if lo < 0 or hi < 0:
                raise BadInput(f"--seeds: {part!r} is negative", hint="seeds are integers from 0 to "
                               f"{MAX_SEED}, e.g. --seeds 0,1,2,3,4")
            if max(lo, hi) > MAX_SEED:
                raise BadInput(f"--seeds: {max(lo, hi)} is above the largest seed {MAX_SEED}",
                               hint="e.g. --seeds 0,1,2,3,4")
            if hi < lo:
                raise BadInput(f"--seeds: the range {part!r} is empty", hint="write LOW-HIGH, e.g. --seeds 0-4")
            given += hi - lo + 1
            if given > MAX_SEEDS:
                raise BadInput(f"--seeds {text!r} asks for more than {MAX_SEEDS} seeds",
                               hint="an ensemble has a handful of seeds, e.g. --seeds 0-4")
            seeds.update(range(lo, hi + 1))
    except ValueError:
        raise BadInput(f"--seeds: {text!r} is not a list of integers", hint="e.g. --seeds 0,1,2,3,4 or --seeds 0-4") from None
    if not seeds:
        raise BadInput(f"--seeds: {text!r} gives no seeds", hint="e.g. --seeds 0,1,2,3,4")
    if given > len(seeds):
        warn(f"--seeds {text!r} names {given - len(seeds)} seed(s) twice: training {len(seeds)} distinct seeds")
    return tuple(sorted(seeds))
