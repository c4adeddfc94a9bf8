"""`ensemble-kit corpus` (+ `corpus import`, `corpus export`), `score` and `merge`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from kit.cli.options import (
    EPILOG_EXIT_CODES,
    POSITIVE,
    demo_options,
    demo_settings,
    drop_invalid_option,
    encoder_options,
    encoders_and_cqs,
    executor_options,
    ffmpeg_option,
    geometry,
    geometry_options,
    jobs_option,
    json_option,
    out_dir_option,
    quiet_option,
    references,
    scorer_option,
)
from kit.cli.output import emit, note
from kit.core import proc
from kit.core.console import Progress, warn
from kit.core.fsio import out_target
from kit.core.rundir import RunDir
from kit.core.schema import FEATURES, LIBVMAF_KEYS
from kit.corpus import ffmpeg, grid, inputs, scoring
from kit.corpus import vmaf_cli as vmaf_cli_tools
from kit.env.platform import cpu_count
from kit.results import bundle


@click.group("corpus", invoke_without_command=True, epilog=EPILOG_EXIT_CODES)
@demo_options(demo_help="Use the built-in deterministic lavfi clips, with the pipeline's demo settings (no data needed).")
@click.option("--ref-dir", type=click.Path(path_type=Path), help="Folder of reference clips (.yuv, .y4m, .mp4, .mkv, ...).")
@geometry_options()
@encoder_options(encoders_help="Comma-separated encoders (default: this box's working ones, by real test encodes).")
@jobs_option("Cells in parallel (default: one per core).")
@click.option("--shard", help="Run only shard K/N of the grid (0-based: 0/4 .. 3/4), e.g. from a Slurm array index.")
@executor_options()
@out_dir_option(help="Run directory: corpus/cells/*.parquet, corpus/failures.jsonl, corpus.parquet.")
@ffmpeg_option()
@click.option("--threads", "--vmaf-threads", "vmaf_threads", type=click.IntRange(min=1),
              help="libvmaf threads per cell (default: cores / cells still running; --vmaf-threads: the old name).")
@scorer_option()
@click.option("--cell-timeout", type=POSITIVE, help="Seconds before a hung encode/score is killed (default: scales with clip size).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default="parquet", show_default=True,
              help="jsonl also writes corpus.jsonl with the old kit's column names.")
@quiet_option("No progress bar or per-cell lines.")
@json_option("Print the run summary as JSON on stdout.")
@click.pass_context
def corpus_cmd(ctx: click.Context, demo: bool, demo_frames: int | None, demo_size: str | None, ref_dir: Path | None,
               width: int | None, height: int | None, pix_fmt: str | None, fps: str | None, encoders: str | None,
               cqs: str | None, jobs: int | None, shard: str | None, executor: str, dask_scheduler: str | None,
               out_dir: Path, ffmpeg_path: str | None,
               vmaf_threads: int | None, scorer: str, cell_timeout: float | None, fmt: str, quiet: bool,
               as_json: bool) -> None:
    """Encode every reference at every cq with every encoder and score each frame with libvmaf.

    Cells (source x encoder x cq) run in parallel and are written atomically; a rerun reuses finished
    cells, so a killed run resumes. Failed cells go to corpus/failures.jsonl and the command ends with
    exit code 4 after finishing the others. --demo builds exactly the pipeline's demo corpus.
    With --shard only that shard's cells are computed; `corpus assemble` then builds corpus.parquet
    once every shard is done (docs/cluster.md). A second launch of the same run on the same
    --out-dir exits 2 naming the running one.

    \b
    Examples:
      ensemble-kit corpus --demo --out-dir runs/demo
      ensemble-kit corpus --ref-dir refs/ --encoders libx264,libx265 --cqs 22,27,32 --out-dir runs/x
      ensemble-kit corpus --ref-dir refs/ --encoders libx264 --shard $SLURM_ARRAY_TASK_ID/8 --out-dir /shared/run
      ensemble-kit corpus assemble --out-dir /shared/run
      ensemble-kit corpus --ref-dir refs/ --encoders libx264 --executor dask --dask-scheduler tcp://head:8786 --out-dir /shared/run
      ensemble-kit corpus import old_kit_corpus.jsonl --out-dir runs/imported
    """
    if ctx.invoked_subcommand is not None:
        return
    # heavy (pandas): imported when the command runs, so `ensemble-kit --help` stays fast
    from kit.corpus import dask_executor, engine, table

    with proc.sigterm_as_interrupt():
        dask_executor.check(executor, dask_scheduler)  # before any probing: a missing dask is one line
        refs_dir = references(demo, ref_dir, demo_by_default=False)  # said before any probing
        names, cq_values = encoders_and_cqs(encoders, cqs)
        size, frames = demo_settings(demo_size, demo_frames)
        request = inputs.CorpusRequest(ref_dir=refs_dir, encoders=names, cqs=cq_values, demo_size=size,
                                       demo_frames=frames, raw_geometry=geometry(width, height, pix_fmt, fps))
        request.check()
        shard_kn = grid.parse_shard(shard) if shard else None
        ff = ffmpeg.find_ffmpeg(ffmpeg_path)
        vmaf_cli = vmaf_cli_tools.choose_scorer(scorer)
        run_dir = engine.prepare_run_dir(out_dir)
        corpus = inputs.resolve(request, ff, default_encoders=lambda: inputs.box_encoders(ff))
        if not quiet:
            note(f"{corpus.describe()}{f', shard {shard}' if shard else ''} -> {out_dir}; scored by "
                 f"{vmaf_cli.describe() if vmaf_cli else 'ffmpeg libvmaf filter'}")
        with Progress("corpus", quiet=quiet, unit="cells") as bar:  # run_corpus kills its tools itself when interrupted
            summary = engine.run_corpus(run_dir, corpus.sources, corpus.encoders, corpus.cqs, ff=ff, jobs=jobs,
                                        shard=shard_kn, vmaf_threads=vmaf_threads, timeout=cell_timeout,
                                        vmaf_cli=vmaf_cli, progress=engine.progress_callback(bar), on_plan=bar.plan,
                                        executor=executor, dask_scheduler=dask_scheduler)
        if fmt == "jsonl" and summary.corpus_path:
            table.export_jsonl(run_dir.corpus, run_dir.corpus_jsonl)
        emit(summary.to_json(), as_json)
        if not as_json and not quiet:
            where = summary.corpus_path or (f"(shard {shard}: {summary.missing_cells} grid cells not on disk yet; "
                                            f"`ensemble-kit corpus assemble --out-dir {out_dir}` once every shard is done)")
            note(f"corpus: {summary.done} cells computed, {summary.reused} reused, {len(summary.failed)} failed "
                 f"of {summary.planned}; {summary.corpus_rows} rows -> {where}")
        summary.raise_if_failed(run_dir.failures, hint="fix the cause and rerun the same command: finished cells are reused")


@corpus_cmd.command("assemble", epilog=EPILOG_EXIT_CODES)
@out_dir_option(default=None, required=True, help="The run directory the shards wrote (corpus/grid.json, corpus/cells/).")
@json_option("Print the report (every missing cell, with its shard) as JSON.")
def corpus_assemble_cmd(out_dir: Path, as_json: bool) -> None:
    """Build corpus.parquet from a sharded run once every cell of its grid is there.

    Checks every cell file the grid (corpus/grid.json) lists. With all of them whole, writes
    corpus.parquet: the same content as one box running the whole grid. Otherwise writes nothing and
    exits 4 naming the missing cells, the shard that owns each and why it failed. This is what a
    cluster's assemble job runs (docs/cluster.md).

    \b
    Example:
      ensemble-kit corpus assemble --out-dir /shared/runs/r1
    """
    from kit.corpus import assembly  # heavy (pandas): imported when the command runs

    report = assembly.assemble_grid(RunDir(out_dir))
    emit(report.to_json(), as_json)
    if not as_json and not report.missing:
        note(f"assembled {report.grid_cells} cells: {report.corpus_rows} rows -> {report.corpus} "
             f"(content sha256 {report.corpus_sha256})")
    report.raise_if_missing()


@corpus_cmd.command("import")
@click.argument("jsonl", nargs=-1, required=True, type=click.Path(path_type=Path))
@out_dir_option(default=None, required=True, help="Run directory to write corpus.parquet into.")
@drop_invalid_option()
@json_option("Print the import report as JSON.")
def corpus_import_cmd(jsonl: tuple[Path, ...], out_dir: Path, drop_invalid: bool, as_json: bool) -> None:
    """Import per-frame JSONL into corpus.parquet: ours (`corpus export`, lossless), the fork's
    (hw_encoder_corpus.py) or the old bash kit's. Exact duplicate rows are dropped; an invalid row is an
    error naming its file:line (or, with --drop-invalid, skipped and counted in corpus/import.json).

    \b
    Example:
      ensemble-kit corpus import old/corpus.jsonl --out-dir runs/imported
      ensemble-kit corpus import per_frame_canonical6.jsonl --out-dir runs/fork --drop-invalid
    """
    from kit.corpus import table  # heavy (pandas): imported when the command runs

    report = table.import_jsonl(list(jsonl), RunDir(out_dir), drop_invalid=drop_invalid)
    emit(report, as_json)
    if not as_json:
        skipped = f", {report['invalid_rows_dropped']} invalid rows skipped" if report["invalid_rows_dropped"] else ""
        note(f"imported {report['rows']} rows ({report['sources']} sources) -> {report['corpus']}; "
             f"{report['duplicates_dropped']} duplicate rows dropped, {report['conflicts']} conflicting{skipped}")


@corpus_cmd.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(), help="Output .jsonl, or a folder for corpus.jsonl (default RUN_DIR/corpus.jsonl).")
def corpus_export_cmd(run_dir: Path, out: str | None) -> None:
    """Export RUN_DIR/corpus.parquet as per-frame JSONL: every column (lossless: `corpus import` reads it
    back to the same corpus hash), the fork trainer's keys first, so the fork can train on it as is.

    \b
    Example:
      ensemble-kit corpus export runs/demo --out corpus.jsonl
    """
    from kit.corpus import table  # heavy (pandas): imported when the command runs

    rd = RunDir(run_dir)
    target = out_target(out, rd.corpus_jsonl.name) if out is not None else rd.corpus_jsonl
    n = table.export_jsonl(rd.corpus, target)
    note(f"wrote {n} rows -> {target}")


@click.command("score", epilog=EPILOG_EXIT_CODES)
@click.argument("ref", type=click.Path(path_type=Path))
@click.argument("dis", type=click.Path(path_type=Path))
@geometry_options("raw .yuv inputs")
@ffmpeg_option()
@click.option("--threads", type=click.IntRange(min=1), default=None, help="libvmaf threads (default: all cores).")
@scorer_option()
@json_option("Per-frame and pooled values as JSON on stdout.")
def score_cmd(ref: Path, dis: Path, width: int | None, height: int | None, pix_fmt: str | None, fps: str | None,
              ffmpeg_path: str | None, threads: int | None, scorer: str, as_json: bool) -> None:
    """Score one distorted clip against its reference with libvmaf (vmaf_v0.6.1): per-frame and pooled.

    \b
    Examples:
      ensemble-kit score ref_1920x1080_25fps.yuv encoded.mp4
      ensemble-kit score ref.y4m dis.y4m --json > scores.json
    """
    ff = ffmpeg.find_ffmpeg(ffmpeg_path)
    vmaf_cli = vmaf_cli_tools.choose_scorer(scorer)
    r, d, result = scoring.score_files(ff, ref, dis, n_threads=threads or cpu_count(), vmaf_cli=vmaf_cli,
                                       **geometry(width, height, pix_fmt, fps))
    pooled = result.pooled()
    doc = {"reference": str(r.path), "distorted": str(d.path), "model": result.model,
           "libvmaf_version": result.libvmaf_version, "backend": result.backend,
           "scorer": vmaf_cli_tools.scorer_identity(vmaf_cli, ff.libvmaf_version),
           "frames": [{"frame_index": i, **f} for i, f in enumerate(result.frames)],
           "pooled_mean": pooled, "libvmaf_pooled_vmaf": result.libvmaf_pooled}
    table = Table("frame", *LIBVMAF_KEYS, title=escape(f"{d.path.name} vs {r.path.name} ({result.model})"))
    for i, f in enumerate(result.frames):
        table.add_row(str(i), *(f"{f[k]:.4f}" for k in LIBVMAF_KEYS))
    table.add_row("mean", *(f"{pooled[k]:.4f}" for k in LIBVMAF_KEYS), style="bold")
    scorer = vmaf_cli.describe() if vmaf_cli else f"ffmpeg's libvmaf filter {result.libvmaf_version}"
    emit(doc, as_json, text=[table, f"VMAF {pooled['vmaf']:.6f} (mean of {result.n_frames} frames; "
                                    f"features {', '.join(FEATURES)}; scored by {scorer})"])


@click.command("merge", epilog=EPILOG_EXIT_CODES)
@click.argument("inputs_", metavar="INPUTS", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(), required=True,
              help="Output corpus (.parquet, or .jsonl: every column, the fork trainer's keys first); a folder (an "
                   "existing one, or a path ending in /) gets corpus.parquet.")
@drop_invalid_option()
@json_option("Print the merge report as JSON.")
def merge_cmd(inputs_: tuple[Path, ...], out: str, drop_invalid: bool, as_json: bool) -> None:
    """Combine corpora or shards from several boxes, de-duplicated on (src_sha256, encoder, cq, frame_index).

    Inputs are run directories, corpus .parquet files, results bundles (.tar.gz) or per-frame .jsonl files.
    Identical duplicates are dropped; conflicting duplicates (same key, different values) keep the first
    input's row and are reported and written to OUT.conflicts.parquet.

    \b
    Example:
      ensemble-kit merge runs/boxA runs/boxB shard-dirs/* --out merged/corpus.parquet
      ensemble-kit merge ensemble-results-linux-cuda-*.tar.gz runs/lead --out merged/corpus.parquet
    """
    from kit.corpus import table  # heavy (pandas): imported when the command runs

    # results bundles are verified and safely extracted first
    target = out_target(out, "corpus.parquet")
    report = table.merge([bundle.corpus_from(p) if bundle.is_bundle(p) else p for p in inputs_], target,
                         drop_invalid=drop_invalid)
    emit(report, as_json)
    if not as_json:
        note(f"merged {report['inputs']} inputs: {report['rows']} rows -> {report['out']}; "
             f"{report['duplicates_dropped']} duplicates dropped")
    if report["conflicts"]:
        warn(f"{report['conflicts']} conflicting duplicate keys (same src/encoder/cq/frame, different values): "
             f"kept the first input's rows; all versions are in {report['conflicts_file']}")


COMMANDS = (corpus_cmd, score_cmd, merge_cmd)
