"""Every training hyperparameter in one dataclass: the defaults ARE the model the consumers expect.

Each field is a CLI flag (`--epochs`, `--lr`, ...: `kit.cli.options.train_config_options` makes one
per field, with the field's `help`), and the whole config is recorded in the LOSO summary, the verdict
and every model sidecar, so a result always says how it was trained. Adding a field adds its flag.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from kit.core.errors import BadInput
from kit.train.codec import DEFAULT_VOCAB, VOCABS


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
    # depend on it (each model's arithmetic is independent of its group).
    workers: int = field(default=0, metadata={
        "help": "Model groups trained side by side, 0 = one per core; results do not depend on it."})
    # torch intra-op threads; FIXED (not "all cores") so results are byte-identical. 1 is also the
    # fastest here: the batched step is many small ops, and a second OpenMP thread on a busy box makes
    # every op wait for it (measured 3 ms vs 20-50 ms per step on a shared 2-core box).
    threads: int = field(default=1, metadata={"help": "Torch threads, fixed for reproducibility."})

    def __post_init__(self) -> None:
        checks = {
            "hidden": self.hidden >= 1,
            "dropout": 0.0 <= self.dropout < 1.0,
            "lr": self.lr > 0,
            "weight-decay": self.weight_decay >= 0,
            "beta1": 0 <= self.beta1 < 1,
            "beta2": 0 <= self.beta2 < 1,
            "eps": self.eps > 0,
            "batch-size": self.batch_size >= 1,
            "epochs": self.epochs >= 1,
            "threads": self.threads >= 1,
            "workers": self.workers >= 0,
            "codec-vocab": self.codec_vocab in VOCABS,
        }
        for flag, ok in checks.items():
            if not ok:
                value = getattr(self, flag.replace("-", "_"))
                raise BadInput(f"--{flag}: {value!r} is out of range", hint="see `ensemble-kit train --help`")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """Apply CLI overrides; None means 'not given' so the default stays."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2' or '0-4' -> sorted unique seeds; `--seeds` is authoritative (never silently replaced)."""
    seeds: set[int] = set()
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if "-" in part:
                lo, hi = part.split("-", 1)
                seeds.update(range(int(lo), int(hi) + 1))
            else:
                seeds.add(int(part))
    except ValueError:
        raise BadInput(f"--seeds: {text!r} is not a list of integers", hint="e.g. --seeds 0,1,2,3,4 or --seeds 0-4") from None
    if not seeds or min(seeds) < 0:
        raise BadInput(f"--seeds: {text!r} gives no non-negative seeds", hint="e.g. --seeds 0,1,2,3,4")
    return tuple(sorted(seeds))
