"""`ensemble-kit pipeline`: the whole job in one command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kit.cli.options import (
    EPILOG_EXIT_CODES,
    demo_options,
    demo_settings,
    encoder_options,
    encoders_and_cqs,
    executor_options,
    ffmpeg_option,
    gate_options,
    gate_overrides,
    jobs_option,
    max_memory_option,
    out_dir_option,
    quiet_option,
    references,
    scorer_option,
    train_config_options,
    train_overrides,
)
from kit.cli.output import emit, note
from kit.core.errors import ExitCode
from kit.results.thresholds import PROMOTE
from kit.train.config import parse_seeds


@click.command("pipeline", epilog=EPILOG_EXIT_CODES)
@click.option("--ref-dir", type=click.Path(path_type=Path), default=None,
              help="Folder of reference clips; without it the built-in demo clips are used.")
@demo_options(demo_help="Run on the built-in demo clips (the default when --ref-dir is not given).")
@encoder_options(encoders_help="Comma-separated encoders (default: this box's encoders that pass a test encode).")
@click.option("--seeds", default="0,1,2,3,4", show_default=True, help="Training seeds, e.g. 0,1,2,3,4 or 0-4.")
@out_dir_option(default=None, help="Run directory (default runs/demo for the demo, runs/pipeline otherwise).")
@jobs_option("Corpus cells in parallel, and model groups trained side by side (default: one per core).")
@executor_options()
@ffmpeg_option()
@scorer_option()
@click.option("--fresh", is_flag=True, help="Move an existing run in --out-dir aside (<out-dir>.old-<utc>) and start anew.")
@max_memory_option()
@quiet_option("Only the result line.")
@train_config_options(demo_note=True, skip=("workers",))
@gate_options(with_short_flags=False)
def pipeline_cmd(ref_dir: Path | None, demo: bool, demo_frames: int | None, demo_size: str | None,
                 encoders: str | None, cqs: str | None, seeds: str, out_dir: Path | None, jobs: int | None,
                 executor: str, dask_scheduler: str | None, ffmpeg_path: str | None, scorer: str, fresh: bool, max_memory: int | None, quiet: bool,
                 **overrides: Any) -> None:
    """The whole job: prereqs, corpus, train, verdict, export (on PROMOTE), report, bundle.

    A rerun with the same options resumes (finished cells and steps are not redone); other options
    would mix results and are refused unless --fresh. Exit 0 PROMOTE, 1 HOLD.

    \b
    Examples:
      ensemble-kit pipeline                                  # the demo, into runs/demo
      ensemble-kit pipeline --ref-dir refs/ --out-dir runs/box1
      ensemble-kit pipeline --ref-dir refs/ --encoders h264_nvenc,hevc_nvenc --cqs 22,27,32
    """
    from kit import pipeline  # heavy (torch, pandas): imported when the command runs

    ref_dir = references(demo, ref_dir, demo_by_default=True)
    names, cq_values = encoders_and_cqs(encoders, cqs)
    size, frames = demo_settings(demo_size, demo_frames)
    options = pipeline.PipelineOptions(
        out_dir=out_dir or Path("runs/demo" if ref_dir is None else "runs/pipeline"),
        ref_dir=ref_dir,
        encoders=names,
        cqs=cq_values,
        seeds=parse_seeds(seeds),
        jobs=jobs,
        executor=executor,
        dask_scheduler=dask_scheduler,
        train_overrides=train_overrides({**overrides, "workers": jobs}),
        gate_overrides=gate_overrides(overrides),
        ffmpeg=ffmpeg_path,
        scorer=scorer,
        fresh=fresh,
        quiet=quiet,
        max_memory=max_memory,
        demo_frames=frames,
        demo_size=size,
    )
    result = pipeline.run_pipeline(options)
    if not quiet:
        note(result.recommendation)
        note(f"done in {result.wall_s:.1f} s; mail back {result.bundle}")
    emit(None, text=f"{result.verdict} {result.bundle}")
    if result.verdict != PROMOTE:
        sys.exit(int(ExitCode.HOLD))


COMMANDS = (pipeline_cmd,)
