"""The shared option decorators: each flag that several commands take is declared once, here.

`train_config_options` makes one flag per `TrainConfig` field and `gate_options` one per
`Thresholds` field (from the dataclasses and their `help` metadata), so a new field is a new flag
everywhere. Everything imported here is light (no torch, no pandas): `ensemble-kit --help` builds
every command's options.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import click

from kit.core.errors import BadInput
from kit.corpus import demo
from kit.corpus.dask_executor import EXECUTORS
from kit.corpus.encoders import DEFAULT_CQS, parse_cqs, parse_encoders
from kit.corpus.geometry import parse_rate, parse_size, rate_text
from kit.corpus.vmaf_cli import SCORERS
from kit.results.thresholds import Thresholds
from kit.train.config import TrainConfig

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

EPILOG_EXIT_CODES = ("Exit codes: 0 ok/PROMOTE, 1 HOLD/DIVERGED/REFUTES, 2 bad input, 3 prerequisites, 4 work failed, "
                     "130 interrupted, 141 output pipe closed.")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
FFMPEG_HELP = "ffmpeg binary with libvmaf (default: $ENSEMBLE_KIT_FFMPEG, binaries/, PATH, imageio-ffmpeg)."
RUN_DIR_HELP = "Run directory (the one `ensemble-kit corpus` wrote)."


def _stack(*decorators: Decorator) -> Decorator:
    """Apply decorators so the options appear in --help in the order given."""
    def apply(fn: F) -> F:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


def ffmpeg_option(help: str = FFMPEG_HELP) -> Decorator:  # noqa: A002 - click's own word
    return click.option("--ffmpeg", "ffmpeg_path", default=None, help=help)


def scorer_option() -> Decorator:
    return click.option(
        "--scorer", type=click.Choice(list(SCORERS)), default="auto", show_default=True,
        help="ffmpeg: ffmpeg's libvmaf filter. vmaf: the vmaf CLI in binaries/<platform>/bin/ (or $ENSEMBLE_KIT_VMAF). "
             "auto: the filter, unless that CLI was built for a GPU (build-libvmaf --backend cuda).")


def json_option(help: str = "Print the result as JSON on stdout.") -> Decorator:  # noqa: A002
    return click.option("--json", "as_json", is_flag=True, help=help)


def quiet_option(help: str = "No progress bar.") -> Decorator:  # noqa: A002
    return click.option("--quiet", "-q", is_flag=True, help=help)


def drop_invalid_option() -> Decorator:
    return click.option("--drop-invalid", is_flag=True,
                        help="Skip JSONL rows that cannot be corpus rows (null/non-numeric/non-finite score or feature, "
                             "non-integer cq, ...) and count them in the report, instead of stopping at the first.")


# ---- value types: a bad value is one line naming the flag (kit.cli.KitGroup), never a crash later on ----


class PositiveNumber(click.ParamType):
    """A finite number above zero (a frame rate, a timeout): nan, inf, 0 and negatives are refused."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value} is not a finite number above 0", param, ctx)
        return number


class BoundedNumber(click.ParamType):
    """A finite number in [lo, hi] (gate thresholds: PLCCs and their spread)."""

    name = "number"

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not (math.isfinite(number) and self.lo <= number <= self.hi):
            bounds = f"from {self.lo:g} to {self.hi:g}" if math.isfinite(self.lo) and math.isfinite(self.hi) else "finite"
            self.fail(f"{value} is not a number {bounds}" if "from" in bounds else f"{value} is not a finite number",
                      param, ctx)
        return number


class ByteSize(click.ParamType):
    """'64G', '512M', '1.5T' or plain bytes -> bytes."""

    name = "size"
    UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
        unit = text[-1:] if text[-1:] in self.UNITS else ""
        try:
            number = float(text[: len(text) - len(unit)])
        except ValueError:
            self.fail(f"{value!r} is not a size like 64G or 512M", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} is not a size above 0", param, ctx)
        return int(number * self.UNITS[unit])


class FrameRate(click.ParamType):
    """A frame rate, kept exact: '25', '29.97' or '30000/1001' -> that rational as text (kit.corpus.geometry)."""

    name = "rate"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return rate_text(parse_rate(value, "the value"))
        except BadInput as exc:
            self.fail(f"{value!r} is not a frame rate above 0 (e.g. 25, 29.97 or 30000/1001): {exc.message}", param, ctx)


POSITIVE = PositiveNumber()
FINITE = BoundedNumber(-math.inf, math.inf)


# Threads and jobs mean one thing on every command: -j/--jobs is how many units of work run side by side
# (corpus cells, reference sources, model groups); --threads is the threads inside each unit (libvmaf per
# cell or per score, torch per model group).
def jobs_option(help: str = "Work in parallel (default: one per core).") -> Decorator:  # noqa: A002
    return click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, help=help)


def executor_options() -> Decorator:
    """--executor, --dask-scheduler: what runs the corpus cells in parallel; never what they compute."""
    return _stack(
        click.option("--executor", type=click.Choice(EXECUTORS), default="threads", show_default=True,
                     help="Run corpus cells in this process's threads, or as dask.distributed tasks (needs "
                          "pip install 'ensemble-kit[dask]'; docs/cluster.md). Same cell files, same corpus."),
        click.option("--dask-scheduler", metavar="tcp://HOST:PORT", default=None,
                     help="With --executor dask: a running scheduler, whose workers must see --out-dir at the "
                          "same path (default: a LocalCluster of --jobs worker processes on this box)."),
    )


def max_memory_option() -> Decorator:
    return click.option("--max-memory", type=ByteSize(), default=None,
                        help="Refuse training that needs more memory than this, e.g. 64G (default: 80% of this box's "
                             "memory); it bounds seeds x folds x rows and the batch size.")


def out_dir_option(default: Path | None = Path("runs/corpus"), help: str = RUN_DIR_HELP,  # noqa: A002
                   required: bool = False) -> Decorator:
    return click.option("--out-dir", type=click.Path(path_type=Path), default=default, required=required,
                        show_default=default is not None, help=help)


def geometry_options(what: str = ".yuv references") -> Decorator:
    """--width/--height/--pix-fmt/--fps: the geometry of raw references. Explicit beats inferred: a flag
    overrides the file's name and sidecar (kit.corpus.sources says so in one line when they differ)."""
    return _stack(
        click.option("--width", type=click.IntRange(min=1), default=None,
                     help=f"Width of {what} (overrides their name and sidecar)."),
        click.option("--height", type=click.IntRange(min=1), default=None,
                     help=f"Height of {what} (overrides their name and sidecar)."),
        click.option("--pix-fmt", default=None, help=f"Pixel format of {what} (default yuv420p; overrides name and sidecar)."),
        click.option("--fps", type=FrameRate(), default=None,
                     help=f"Frame rate of {what}, kept exact: 25, 29.97 or 30000/1001 (default 25; overrides name "
                          "and sidecar)."),
    )


def geometry(width: int | None, height: int | None, pix_fmt: str | None, fps: str | None) -> dict[str, Any]:
    return {"width": width, "height": height, "pix_fmt": pix_fmt, "fps": fps}


def encoder_options(*, encoders_help: str) -> Decorator:
    """--encoders and --cqs, parsed (and checked against the encoder table) by `encoders_and_cqs`."""
    return _stack(
        click.option("--encoders", default=None, help=encoders_help),
        click.option("--cqs", default=None, help="Comma-separated quality values, lower = better "
                     f"(default {','.join(map(str, DEFAULT_CQS))}; demo {','.join(map(str, demo.DEMO_CQS))})."),
    )


def encoders_and_cqs(encoders: str | None, cqs: str | None) -> tuple[tuple[str, ...] | None, tuple[int, ...] | None]:
    """None when a flag is not given (the defaults); a given but empty list is bad input, never the defaults."""
    return (parse_encoders(encoders) if encoders is not None else None,
            parse_cqs(cqs) if cqs is not None else None)


def demo_options(*, demo_help: str) -> Decorator:
    """--demo, --demo-size, --demo-frames: the built-in clips, with the demo's settings by default."""
    w, h = demo.DEMO_SIZE
    return _stack(
        click.option("--demo", is_flag=True, help=demo_help),
        click.option("--demo-frames", type=click.IntRange(min=2, max=10_000), default=None,
                     help=f"Frames per demo clip (default {demo.DEMO_FRAMES})."),
        click.option("--demo-size", default=None, help=f"Demo clip size WxH (default {w}x{h})."),
    )


def demo_settings(size: str | None, frames: int | None) -> tuple[tuple[int, int], int]:
    return (parse_size(size) if size is not None else demo.DEMO_SIZE), (frames or demo.DEMO_FRAMES)


def train_config_options(*, demo_note: bool = False, skip: tuple[str, ...] = ()) -> Decorator:
    """One --flag per TrainConfig field (default None = the dataclass default, which --help shows); the
    fields in `skip` are set another way (the pipeline's -j/--jobs also sets the training workers)."""
    decorators = []
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        note = f"; demo {demo.DEMO_TRAIN[f.name]}" if demo_note and f.name in demo.DEMO_TRAIN else ""
        names = f.metadata.get("flag") or (f"--{f.name.replace('_', '-')}",)
        kind = type(f.default)
        kind = click.Choice(f.metadata["choices"]) if "choices" in f.metadata else FINITE if kind is float else kind
        decorators.append(click.option(*names, f.name, type=kind, default=None,
                                       help=f"{f.metadata.get('help', f.name)} [default: {f.default}{note}]"))
    return _stack(*decorators)


def train_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields given on the command line (out of a command's keyword arguments)."""
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in values.items() if k in names and v is not None}


def gate_options(*, with_short_flags: bool) -> Decorator:
    """One --gate-<threshold> flag per Thresholds field. `verdict` also takes the short spelling and shows
    the default; the pipeline passes only what was given (None = the default)."""
    decorators = []
    for f in fields(Thresholds):
        long_flag = f"--gate-{f.name.replace('_', '-')}"
        kind = BoundedNumber(*f.metadata["range"])
        if with_short_flags:
            decorators.append(click.option(f.metadata["flag"], long_flag, f.name, type=kind, default=f.default,
                                           show_default=True, help=f.metadata["help"]))
        else:
            decorators.append(click.option(long_flag, f"gate_{f.name}", type=kind, default=None,
                                           help=f"Gate: {f.metadata['help'][0].lower()}{f.metadata['help'][1:-1]} "
                                                f"(default {f.default})."))
    return _stack(*decorators)


def gate_given(ctx: click.Context, **values: float) -> dict[str, float]:
    """The `verdict` thresholds typed on the command line (a flag left at its shown default is not given:
    the run's carried thresholds, else the defaults, apply)."""
    return {name: value for name, value in values.items()
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}


def gate_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The gate thresholds given on the command line (pipeline's --gate-* flags)."""
    names = {f.name for f in fields(Thresholds)}
    return {k.removeprefix("gate_"): v for k, v in values.items()
            if k.startswith("gate_") and k.removeprefix("gate_") in names and v is not None}


def references(demo_flag: bool, ref_dir: Path | None, *, demo_by_default: bool) -> Path | None:
    """--demo / --ref-dir: the reference folder, or None for the demo clips (usage errors are bad input)."""
    if demo_flag and ref_dir is not None:
        raise BadInput("--demo and --ref-dir are mutually exclusive", hint="pass one of them")
    if not demo_flag and ref_dir is None and not demo_by_default:
        raise BadInput("no references: pass --ref-dir DIR (your clips) or --demo (built-in lavfi clips)",
                       hint="e.g. ensemble-kit corpus --demo --out-dir runs/demo")
    return ref_dir
