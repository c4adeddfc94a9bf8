"""The shared option decorators: each flag that several commands take is declared once, here.

`train_config_options` makes one flag per `TrainConfig` field and `gate_options` one per
`Thresholds` field (from the dataclasses and their `help` metadata), so a new field is a new flag
everywhere. Everything imported here is light (no torch, no pandas): `ensemble-kit --help` builds
every command's options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import click

from kit.core.errors import BadInput
from kit.corpus import demo
from kit.corpus.encoders import DEFAULT_CQS, parse_cqs, parse_encoders
from kit.corpus.geometry import parse_size
from kit.corpus.vmaf_cli import SCORERS
from kit.results.thresholds import Thresholds
from kit.train.config import TrainConfig

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

EPILOG_EXIT_CODES = "Exit codes: 0 ok/PROMOTE, 1 HOLD/DIVERGED, 2 bad input, 3 prerequisites, 4 work failed, 130 interrupted."
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


def jobs_option(help: str = "Work in parallel (default: one per core).") -> Decorator:  # noqa: A002
    return click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, help=help)


def out_dir_option(default: Path | None = Path("runs/corpus"), help: str = RUN_DIR_HELP,  # noqa: A002
                   required: bool = False) -> Decorator:
    return click.option("--out-dir", type=click.Path(path_type=Path), default=default, required=required,
                        show_default=default is not None, help=help)


def geometry_options(what: str = ".yuv files whose name/sidecar does not say") -> Decorator:
    """--width/--height/--pix-fmt/--fps: the fallback geometry of raw references."""
    return _stack(
        click.option("--width", type=int, default=None, help=f"Fallback width for {what}."),
        click.option("--height", type=int, default=None, help=f"Fallback height for {what}."),
        click.option("--pix-fmt", default=None, help=f"Fallback pixel format for {what} (default yuv420p)."),
        click.option("--fps", type=float, default=None, help=f"Fallback frame rate for {what} (default 25)."),
    )


def geometry(width: int | None, height: int | None, pix_fmt: str | None, fps: float | None) -> dict[str, Any]:
    return {"width": width, "height": height, "pix_fmt": pix_fmt, "fps": fps}


def encoder_options(*, encoders_help: str) -> Decorator:
    """--encoders and --cqs, parsed (and checked against the encoder table) by `encoders_and_cqs`."""
    return _stack(
        click.option("--encoders", default=None, help=encoders_help),
        click.option("--cqs", default=None, help="Comma-separated quality values, lower = better "
                     f"(default {','.join(map(str, DEFAULT_CQS))}; demo {','.join(map(str, demo.DEMO_CQS))})."),
    )


def encoders_and_cqs(encoders: str | None, cqs: str | None) -> tuple[tuple[str, ...] | None, tuple[int, ...] | None]:
    names = parse_encoders(encoders) if encoders else None
    return names or None, parse_cqs(cqs) if cqs else None


def demo_options(*, demo_help: str) -> Decorator:
    """--demo, --demo-size, --demo-frames: the built-in clips, with the demo's settings by default."""
    w, h = demo.DEMO_SIZE
    return _stack(
        click.option("--demo", is_flag=True, help=demo_help),
        click.option("--demo-frames", type=click.IntRange(min=2), default=None,
                     help=f"Frames per demo clip (default {demo.DEMO_FRAMES})."),
        click.option("--demo-size", default=None, help=f"Demo clip size WxH (default {w}x{h})."),
    )


def demo_settings(size: str | None, frames: int | None) -> tuple[tuple[int, int], int]:
    return (parse_size(size) if size else demo.DEMO_SIZE), (frames or demo.DEMO_FRAMES)


def train_config_options(*, demo_note: bool = False) -> Decorator:
    """One --flag per TrainConfig field (default None = the dataclass default, which --help shows)."""
    decorators = []
    for f in fields(TrainConfig):
        note = f"; demo {demo.DEMO_TRAIN[f.name]}" if demo_note and f.name in demo.DEMO_TRAIN else ""
        kind = click.Choice(f.metadata["choices"]) if "choices" in f.metadata else type(f.default)
        decorators.append(click.option(f"--{f.name.replace('_', '-')}", f.name, type=kind, default=None,
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
        if with_short_flags:
            decorators.append(click.option(f.metadata["flag"], long_flag, f.name, type=float, default=f.default,
                                           show_default=True, help=f.metadata["help"]))
        else:
            decorators.append(click.option(long_flag, f"gate_{f.name}", type=float, default=None,
                                           help=f"Gate: {f.metadata['help'][0].lower()}{f.metadata['help'][1:-1]} "
                                                f"(default {f.default})."))
    return _stack(*decorators)


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
