"""The click door: parses options, calls the domain modules, prints results, maps errors to exit codes.

Nothing here computes anything; each command's work lives in its own module and is callable from Python.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import click

from kit import __version__
from kit.core.console import err
from kit.core.errors import ExitCode, KitError

EPILOG_EXIT_CODES = "Exit codes: 0 ok/PROMOTE, 1 HOLD/DIVERGED, 2 bad input, 3 prerequisites, 4 work failed, 130 interrupted."


class KitGroup(click.Group):
    """Turns every expected failure into one line and its documented exit code (never a traceback)."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except KitError as exc:
            err.print(f"[red]error:[/red] {exc}", markup=True)
            sys.exit(int(exc.exit_code))
        except KeyboardInterrupt:
            err.print("interrupted: finished work is kept; rerun the same command to resume")
            sys.exit(int(ExitCode.INTERRUPTED))
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC
                err.print(f"[red]error:[/red] disk full while writing {exc.filename or ''}: free space and rerun (finished work is kept)")
                sys.exit(int(ExitCode.BAD_INPUT))
            raise _internal(exc) from None
        except Exception as exc:  # a bug: say so in one line, keep the traceback for the report
            raise _internal(exc) from None


def _internal(exc: BaseException) -> SystemExit:
    if os.environ.get("ENSEMBLE_KIT_DEBUG"):
        traceback.print_exception(exc)
    else:
        err.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {exc} "
            "(a bug in ensemble-kit; rerun with ENSEMBLE_KIT_DEBUG=1 for the traceback and report it)"
        )
    return SystemExit(int(ExitCode.WORK_FAILED))


@click.group(cls=KitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EPILOG_EXIT_CODES)
@click.version_option(__version__, prog_name="ensemble-kit")
def main() -> None:
    """Regenerate a VMAF corpus with this box's encoders, retrain a LOSO ensemble, return a verdict.

    \b
    Example (everything on built-in demo clips):
      ensemble-kit pipeline --demo --out-dir runs/demo
    """


# ---- corpus engine (issue: corpus) ------------------------------------------------------------


def _corpus_sources(ff, demo: bool, ref_dir: Path | None, out_dir: Path, geometry: dict):
    from kit.core.errors import BadInput
    from kit.corpus import demo as demo_mod
    from kit.corpus import sources

    if demo and ref_dir:
        raise BadInput("--demo and --ref-dir are mutually exclusive", hint="pass one of them")
    if not demo and not ref_dir:
        raise BadInput("no references: pass --ref-dir DIR (your clips) or --demo (built-in lavfi clips)",
                          hint="e.g. ensemble-kit corpus --demo --out-dir runs/demo")
    if demo:
        ref_dir = demo_mod.make_demo_sources(out_dir / "demo-refs", ff)
    return sources.discover(ref_dir, ff=ff, **geometry)


def _corpus_encoders(ff, text: str | None) -> list[str]:
    from kit.core.console import warn
    from kit.core.errors import PrereqError
    from kit.env import platform

    if text:
        return [e.strip() for e in text.split(",") if e.strip()]
    choice = platform.default_encoders(ffmpeg=ff)
    for line in choice.warnings:
        warn(line)
    if not choice.encoders:
        raise PrereqError("no encoder passes a test encode on this box", hint="see `ensemble-kit prereqs`")
    return list(choice.encoders)


def _progress_printer(quiet: bool):
    """(on_plan, on_cell, close) for run_corpus: the shared progress display, plus one line per failed cell."""
    from kit.core.console import Progress

    bar = Progress("corpus", quiet=quiet)

    def on_cell(outcome, done: int, total: int) -> None:
        if outcome.status == "failed" and not quiet:
            err.print(f"[red]cell failed:[/red] {outcome.cell.label}: {outcome.reason}")
        bar.tick(done, total, last=outcome.cell.label)

    return bar.plan, on_cell, bar.close


@main.group("corpus", invoke_without_command=True, epilog=EPILOG_EXIT_CODES)
@click.option("--demo", is_flag=True, help="Use built-in deterministic lavfi clips (no data needed).")
@click.option("--ref-dir", type=click.Path(path_type=Path), help="Folder of reference clips (.yuv, .y4m, .mp4, .mkv, ...).")
@click.option("--width", type=int, help="Fallback width for .yuv files whose name/sidecar does not say.")
@click.option("--height", type=int, help="Fallback height for .yuv files.")
@click.option("--pix-fmt", help="Fallback pixel format for .yuv files (default yuv420p).")
@click.option("--fps", type=float, help="Fallback frame rate for .yuv files (default 25).")
@click.option("--encoders", help="Comma-separated encoders (default: this box's working ones, by real test encodes).")
@click.option("--cqs", default="19,25,31,37", show_default=True, help="Comma-separated quality values (lower = better).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Cells in parallel (default: one per core).")
@click.option("--shard", help="Run only shard K/N of the grid (0-based: 0/4 .. 3/4), e.g. from a Slurm array index.")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("runs/corpus"), show_default=True,
              help="Run directory: corpus/cells/*.parquet, corpus/failures.jsonl, corpus.parquet.")
@click.option("--ffmpeg", "ffmpeg_path", help="ffmpeg binary with libvmaf (default: $ENSEMBLE_KIT_FFMPEG, binaries/, PATH, imageio-ffmpeg).")
@click.option("--vmaf-threads", type=click.IntRange(min=1), help="libvmaf n_threads per cell (default: cores / cells still running).")
@click.option("--scorer", type=click.Choice(["ffmpeg", "vmaf"]), default="ffmpeg", show_default=True,
              help="ffmpeg's libvmaf filter, or the vmaf CLI staged in binaries/<platform>/bin/.")
@click.option("--cell-timeout", type=float, help="Seconds before a hung encode/score is killed (default: scales with clip size).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl"]), default="parquet", show_default=True,
              help="jsonl also writes corpus.jsonl with the old kit's column names.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or per-cell lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
@click.pass_context
def corpus_cmd(ctx: click.Context, demo: bool, ref_dir: Path | None, width: int | None, height: int | None,
               pix_fmt: str | None, fps: float | None, encoders: str | None, cqs: str, jobs: int | None,
               shard: str | None, out_dir: Path, ffmpeg_path: str | None, vmaf_threads: int | None, scorer: str,
               cell_timeout: float | None, fmt: str, quiet: bool, as_json: bool) -> None:
    """Encode every reference at every cq with every encoder and score each frame with libvmaf.

    Cells (source x encoder x cq) run in parallel and are written atomically; a rerun reuses finished
    cells, so a killed run resumes. Failed cells go to corpus/failures.jsonl and the command ends with
    exit code 4 after finishing the others.

    \b
    Examples:
      ensemble-kit corpus --demo --out-dir runs/demo
      ensemble-kit corpus --ref-dir refs/ --encoders libx264,libx265 --cqs 22,27,32 --out-dir runs/x
      ensemble-kit corpus --ref-dir refs/ --shard $SLURM_ARRAY_TASK_ID/8 --out-dir /shared/run
      ensemble-kit corpus import old_kit_corpus.jsonl --out-dir runs/imported
    """
    if ctx.invoked_subcommand is not None:
        return
    import signal

    def _term(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _term)
    try:
        _corpus_run(demo, ref_dir, width, height, pix_fmt, fps, encoders, cqs, jobs, shard, out_dir, ffmpeg_path,
                    vmaf_threads, scorer, cell_timeout, fmt, quiet, as_json)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _corpus_run(demo, ref_dir, width, height, pix_fmt, fps, encoders, cqs, jobs, shard, out_dir, ffmpeg_path,
                vmaf_threads, scorer, cell_timeout, fmt, quiet, as_json) -> None:
    import json as _json

    from kit.core.errors import PrereqError
    from kit.corpus import encoders as enc_table
    from kit.corpus import engine as corpus
    from kit.corpus import ffmpeg as tools
    from kit.corpus import legacy

    if demo == bool(ref_dir):  # say this before any probing
        _corpus_sources(None, demo, ref_dir, out_dir, {})
    cq_values = enc_table.parse_cqs(cqs)
    shard_kn = corpus.parse_shard(shard) if shard else None
    if encoders:
        names = [e.strip() for e in encoders.split(",") if e.strip()]
        for name in names:
            enc_table.get(name)
        corpus.check_cqs(names, cq_values)
    ff = tools.find_ffmpeg(ffmpeg_path)
    vmaf_cli = None
    if scorer == "vmaf":
        vmaf_cli = tools.find_vmaf_cli()
        if vmaf_cli is None:
            raise PrereqError("--scorer vmaf: no vmaf CLI in binaries/<platform>/bin/ or $ENSEMBLE_KIT_VMAF",
                                 hint="build it (`ensemble-kit build-libvmaf`) or use --scorer ffmpeg")
    run_dir = corpus.prepare_run_dir(out_dir)
    names = _corpus_encoders(ff, encoders)
    srcs = _corpus_sources(ff, demo, ref_dir, out_dir, {"width": width, "height": height, "pix_fmt": pix_fmt, "fps": fps})
    if not quiet:
        err.print(f"{len(srcs)} sources x {len(names)} encoders ({', '.join(names)}) x {len(cq_values)} cqs = "
                  f"{len(srcs) * len(names) * len(cq_values)} cells{f', shard {shard}' if shard else ''} -> {out_dir}")
    on_plan, on_cell, close = _progress_printer(quiet)
    try:  # run_corpus kills its tools itself when interrupted
        summary = corpus.run_corpus(run_dir, srcs, names, cq_values, ff=ff, jobs=jobs, shard=shard_kn,
                                    vmaf_threads=vmaf_threads, timeout=cell_timeout, vmaf_cli=vmaf_cli,
                                    progress=on_cell, on_plan=on_plan)
    finally:
        close()
    if fmt == "jsonl" and summary.corpus_path:
        legacy.export_jsonl(run_dir.corpus, run_dir.root / "corpus.jsonl")
    if as_json:
        click.echo(_json.dumps(summary.to_json(), indent=2, sort_keys=True))
    elif not quiet:
        where = summary.corpus_path or "(not assembled: other shards' cells are still missing)"
        err.print(f"corpus: {summary.done} cells computed, {summary.reused} reused, {len(summary.failed)} failed "
                  f"of {summary.planned}; {summary.corpus_rows} rows -> {where}")
    summary.raise_if_failed(run_dir.failures, hint="fix the cause and rerun the same command: finished cells are reused")


@corpus_cmd.command("import")
@click.argument("jsonl", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out-dir", type=click.Path(path_type=Path), required=True, help="Run directory to write corpus.parquet into.")
@click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
def corpus_import_cmd(jsonl: tuple[Path, ...], out_dir: Path, as_json: bool) -> None:
    """Import the old bash kit's per-frame JSONL into corpus.parquet (exact duplicate rows dropped).

    \b
    Example:
      ensemble-kit corpus import old/corpus.jsonl --out-dir runs/imported
    """
    import json as _json

    from kit.core.rundir import RunDir
    from kit.corpus import legacy

    report = legacy.import_jsonl(list(jsonl), RunDir(out_dir))
    if as_json:
        click.echo(_json.dumps(report, indent=2, sort_keys=True))
    else:
        err.print(f"imported {report['rows']} rows ({report['sources']} sources) -> {report['corpus']}; "
                  f"{report['duplicates_dropped']} duplicate rows dropped, {report['conflicts']} conflicting")


@corpus_cmd.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Output .jsonl (default RUN_DIR/corpus.jsonl).")
def corpus_export_cmd(run_dir: Path, out: Path | None) -> None:
    """Export RUN_DIR/corpus.parquet as JSONL with the old kit's column names.

    \b
    Example:
      ensemble-kit corpus export runs/demo --out corpus.jsonl
    """
    from kit.core.rundir import RunDir
    from kit.corpus import legacy

    rd = RunDir(run_dir)
    target = out or rd.root / "corpus.jsonl"
    n = legacy.export_jsonl(rd.corpus, target)
    err.print(f"wrote {n} rows -> {target}")


@main.command("score", epilog=EPILOG_EXIT_CODES)
@click.argument("ref", type=click.Path(path_type=Path))
@click.argument("dis", type=click.Path(path_type=Path))
@click.option("--width", type=int, help="Width for raw .yuv inputs whose name/sidecar does not say.")
@click.option("--height", type=int, help="Height for raw .yuv inputs.")
@click.option("--pix-fmt", help="Pixel format for raw .yuv inputs (default yuv420p).")
@click.option("--fps", type=float, help="Frame rate for raw .yuv inputs (default 25).")
@click.option("--ffmpeg", "ffmpeg_path", help="ffmpeg binary with libvmaf.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="libvmaf n_threads (default: all cores).")
@click.option("--scorer", type=click.Choice(["ffmpeg", "vmaf"]), default="ffmpeg", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Per-frame and pooled values as JSON on stdout.")
def score_cmd(ref: Path, dis: Path, width: int | None, height: int | None, pix_fmt: str | None, fps: float | None,
              ffmpeg_path: str | None, threads: int | None, scorer: str, as_json: bool) -> None:
    """Score one distorted clip against its reference with libvmaf (vmaf_v0.6.1): per-frame and pooled.

    \b
    Examples:
      ensemble-kit score ref_1920x1080_25fps.yuv encoded.mp4
      ensemble-kit score ref.y4m dis.y4m --json > scores.json
    """
    import json as _json

    from kit.core.errors import PrereqError
    from kit.core.schema import FEATURES, LIBVMAF_KEYS
    from kit.corpus import ffmpeg as tools
    from kit.corpus import scoring

    ff = tools.find_ffmpeg(ffmpeg_path)
    vmaf_cli = tools.find_vmaf_cli() if scorer == "vmaf" else None
    if scorer == "vmaf" and vmaf_cli is None:
        raise PrereqError("--scorer vmaf: no vmaf CLI in binaries/<platform>/bin/", hint="use --scorer ffmpeg")
    r, d, result = scoring.score_files(ff, ref, dis, n_threads=threads or tools.cpu_count(), vmaf_cli=vmaf_cli,
                                       width=width, height=height, pix_fmt=pix_fmt, fps=fps)
    pooled = result.pooled()
    if as_json:
        click.echo(_json.dumps({"reference": str(r.path), "distorted": str(d.path), "model": result.model,
                                "libvmaf_version": result.libvmaf_version, "backend": result.backend,
                                "frames": [{"frame_index": i, **f} for i, f in enumerate(result.frames)],
                                "pooled_mean": pooled, "libvmaf_pooled_vmaf": result.libvmaf_pooled}, indent=2))
        return
    from rich.table import Table

    from kit.core.console import out

    table = Table("frame", *LIBVMAF_KEYS, title=f"{d.path.name} vs {r.path.name} ({result.model})")
    for i, f in enumerate(result.frames):
        table.add_row(str(i), *(f"{f[k]:.4f}" for k in LIBVMAF_KEYS))
    table.add_row("mean", *(f"{pooled[k]:.4f}" for k in LIBVMAF_KEYS), style="bold")
    out.print(table)
    out.print(f"VMAF {pooled['vmaf']:.6f} (mean of {result.n_frames} frames; features {', '.join(FEATURES)})")


@main.command("merge", epilog=EPILOG_EXIT_CODES)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Output corpus (.parquet, or .jsonl for the old kit's columns).")
@click.option("--json", "as_json", is_flag=True, help="Print the merge report as JSON.")
def merge_cmd(inputs: tuple[Path, ...], out: Path, as_json: bool) -> None:
    """Combine corpora or shards from several boxes, de-duplicated on (src_sha256, encoder, cq, frame_index).

    Inputs are run directories, corpus .parquet files, results bundles (.tar.gz) or old-kit .jsonl files. Identical duplicates are
    dropped; conflicting duplicates (same key, different values) keep the first input's row and are
    reported and written to OUT.conflicts.parquet.

    \b
    Example:
      ensemble-kit merge runs/boxA runs/boxB shard-dirs/* --out merged/corpus.parquet
      ensemble-kit merge ensemble-results-linux-cuda-*.tar.gz runs/lead --out merged/corpus.parquet
    """
    import json as _json

    from kit.core.console import warn
    from kit.corpus import engine as corpus
    from kit.results.bundle import corpus_from, is_bundle  # results bundles: verified, safely extracted

    report = corpus.merge([corpus_from(p) if is_bundle(p) else p for p in inputs], out)
    if as_json:
        click.echo(_json.dumps(report, indent=2, sort_keys=True))
    else:
        err.print(f"merged {report['inputs']} inputs: {report['rows']} rows -> {report['out']}; "
                  f"{report['duplicates_dropped']} duplicates dropped")
    if report["conflicts"]:
        warn(f"{report['conflicts']} conflicting duplicate keys (same src/encoder/cq/frame, different values): "
             f"kept the first input's rows; all versions are in {report['conflicts_file']}")


# ---- training, verdict, export, predict, report (issue: trainer) -------------------------------

_RUN_DIR_OPTION = dict(type=click.Path(path_type=Path), default=Path("runs/corpus"), show_default=True,
                       help="Run directory (the one `ensemble-kit corpus` wrote).")


def _train_progress(quiet: bool, label: str):
    """(callback(done, total), close): the shared progress display, counting epochs."""
    from kit.core.console import Progress

    bar = Progress(label, quiet=quiet, unit="epochs")
    return bar.tick, bar.close


def _train_config_options(f):
    """--epochs, --lr, ... : every TrainConfig field, default = the dataclass default."""
    from kit.train.config import TrainConfig

    d = TrainConfig()
    for flag, typ, text in reversed([
        ("--epochs", click.IntRange(min=1), f"Training epochs per model [default: {d.epochs}]."),
        ("--lr", click.FloatRange(min=0, min_open=True), f"Adam learning rate [default: {d.lr}]."),
        ("--weight-decay", click.FloatRange(min=0), f"Adam L2 weight decay [default: {d.weight_decay}]."),
        ("--batch-size", click.IntRange(min=1), f"Rows per step [default: {d.batch_size}]."),
        ("--hidden", click.IntRange(min=1), f"Width of both hidden layers [default: {d.hidden}]."),
        ("--dropout", click.FloatRange(min=0, max=1, max_open=True), f"Dropout after each GELU [default: {d.dropout}]."),
        ("--threads", click.IntRange(min=1), f"Torch threads, fixed for reproducibility [default: {d.threads}]."),
        ("--workers", click.IntRange(min=0), "Model groups trained side by side, 0 = one per core; results do not "
                                             f"depend on it [default: {d.workers}]."),
    ]):
        f = click.option(flag, type=typ, default=None, help=text)(f)
    return f


@main.command("train", epilog=EPILOG_EXIT_CODES)
@click.option("--corpus", "corpus_path", type=click.Path(path_type=Path),
              help="corpus.parquet, run directory, results bundle (.tar.gz) or old-kit .jsonl [default: OUT_DIR/corpus.parquet].")
@click.option("--out-dir", **_RUN_DIR_OPTION)
@click.option("--seeds", default="0,1,2,3,4", show_default=True, help="Seeds to train (authoritative): 0,1,2 or 0-4.")
@_train_config_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print per-seed results as JSON on stdout.")
def train_cmd(corpus_path: Path | None, out_dir: Path, seeds: str, quiet: bool, as_json: bool, **overrides) -> None:
    """Leave-one-source-out training of seeds x folds (all models in one batched computation).

    Writes OUT_DIR/loso/ (folds.csv, seed<N>/predictions.parquet, summary.json); byte-identical on
    every run of the same corpus in the same environment.

    \b
    Examples:
      ensemble-kit train --out-dir runs/demo
      ensemble-kit train --corpus old_kit_corpus.jsonl --out-dir runs/imported --epochs 100
    """
    from kit.core.console import out
    from kit.core.fsio import canonical_json
    from kit.core.rundir import RunDir
    from kit.train import loso
    from kit.train.config import TrainConfig, parse_seeds
    from kit.train.data import adopt_corpus, load_corpus

    rd = RunDir(out_dir)
    config = TrainConfig().with_overrides(**overrides)
    seed_list = parse_seeds(seeds)
    from kit.results.bundle import corpus_from  # a results bundle is verified and safely extracted first

    df = load_corpus(corpus_from(corpus_path) if corpus_path else rd.corpus)
    if corpus_path is not None:
        adopt_corpus(df, rd.corpus)
    tick, close = _train_progress(quiet, "train")
    try:
        result = loso.run_loso(df, config, seed_list, rd.loso_dir, progress=tick)
    finally:
        close()
    per_seed = result.per_seed()
    if as_json:
        out.print(canonical_json(loso._json_safe({str(s): v for s, v in per_seed.items()})), end="")
        return
    for seed, v in per_seed.items():
        out.print(f"seed {seed}: mean PLCC {v['mean']:.4f} (min {v['min']:.4f}, max {v['max']:.4f}, "
                  f"{v['n']} folds{', ' + str(v['n_nan']) + ' NaN' if v['n_nan'] else ''})")
    err.print(f"LOSO results in {rd.loso_dir}; next: ensemble-kit verdict --out-dir {out_dir}")


@main.command("verdict", epilog=EPILOG_EXIT_CODES)
@click.option("--out-dir", **_RUN_DIR_OPTION)
@click.option("--mean-plcc", "--gate-mean-plcc", "mean_plcc", type=float, default=0.95, show_default=True, help="Minimum mean of the per-seed mean PLCCs.")
@click.option("--spread-max", "--gate-plcc-spread-max", "spread_max", type=float, default=0.005, show_default=True, help="Maximum max-min of the per-seed mean PLCCs.")
@click.option("--per-seed-min", "--gate-per-seed-min", "per_seed_min", type=float, default=0.95, show_default=True, help="Minimum mean PLCC of every seed.")
@click.option("--json", "as_json", is_flag=True, help="Print verdict.json on stdout.")
def verdict_cmd(out_dir: Path, mean_plcc: float, spread_max: float, per_seed_min: float, as_json: bool) -> None:
    """Apply the PROMOTE/HOLD gate to OUT_DIR/loso/ and write OUT_DIR/verdict.json (the one verdict file).

    Exit 0 on PROMOTE, 1 on HOLD (not an error), 2 when there are no LOSO results.

    \b
    Example:
      ensemble-kit verdict --out-dir runs/demo --spread-max 0.01
    """
    from kit.core.console import out
    from kit.core.fsio import canonical_json
    from kit.results import gate

    doc = gate.write_verdict(out_dir, mean_plcc=mean_plcc, plcc_spread_max=spread_max, per_seed_min=per_seed_min)
    if as_json:
        out.print(canonical_json(doc), end="")
    else:
        out.print(doc["recommendation"])
    sys.exit(int(ExitCode.OK if doc["verdict"] == gate.PROMOTE else ExitCode.HOLD))


@main.command("export", epilog=EPILOG_EXIT_CODES)
@click.option("--out-dir", **_RUN_DIR_OPTION)
@click.option("--force", is_flag=True, help="Export even when the verdict is HOLD (recorded in the sidecars).")
@click.option("--corpus", "corpus_path", type=click.Path(path_type=Path),
              help="The corpus the verdict was computed on [default: OUT_DIR/corpus.parquet].")
@click.option("--name", default="ensemble", show_default=True, help="File stem: NAME_seed<N>.onnx.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def export_cmd(out_dir: Path, force: bool, corpus_path: Path | None, name: str, quiet: bool) -> None:
    """Fit each seed on the whole corpus and write verified ONNX models to OUT_DIR/models/.

    Only on PROMOTE (or --force). Each model is checked with onnx.checker and against PyTorch with
    onnxruntime on every corpus row (within 1e-4, else exit 4).

    \b
    Example:
      ensemble-kit export --out-dir runs/demo
    """
    from kit.core.console import out
    from kit.core.rundir import RunDir
    from kit.results import export

    tick, close = _train_progress(quiet, "export")
    try:
        ensemble = export.export_run(out_dir, force=force, corpus=corpus_path, name=name, progress=tick)
    finally:
        close()
    for m in ensemble["members"]:
        out.print(f"{RunDir(out_dir).models_dir / m['onnx']}  sha256 {m['sha256']}")


@main.command("predict", epilog=EPILOG_EXIT_CODES)
@click.option("--models", "models_dir", type=click.Path(path_type=Path), required=True,
              help="Folder with ensemble.json (e.g. runs/demo/models).")
@click.argument("corpus_path", metavar="CORPUS", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("predictions.parquet"), show_default=True,
              help="Where to write per-row predictions (.parquet or .csv).")
def predict_cmd(models_dir: Path, corpus_path: Path, output: Path) -> None:
    """Score every row of CORPUS with the ensemble (onnxruntime): mean, std (ddof=1), 95% interval.

    \b
    Example:
      ensemble-kit predict --models runs/demo/models runs/other/corpus.parquet -o other.csv
    """
    from kit.results import export
    from kit.train.data import load_corpus

    df = export.predict_ensemble(models_dir, load_corpus(corpus_path))
    export.write_predictions(df, output)
    err.print(f"{len(df)} rows -> {output}")


@main.command("report", epilog=EPILOG_EXIT_CODES)
@click.option("--out-dir", **_RUN_DIR_OPTION)
@click.option("--corpus", "corpus_path", type=click.Path(path_type=Path),
              help="Corpus for the rate-quality plot [default: OUT_DIR/corpus.parquet].")
def report_cmd(out_dir: Path, corpus_path: Path | None) -> None:
    """Write OUT_DIR/report/index.html with per-fold PLCC, predicted-vs-actual and rate-quality plots.

    \b
    Example:
      ensemble-kit report --out-dir runs/demo
    """
    from kit.results import report
    from kit.train.data import load_corpus

    path = report.build_report(out_dir, load_corpus(corpus_path) if corpus_path else None)
    err.print(f"report: {path}")


# ---- environment, platform, prereqs, env export, build-libvmaf (issue: environments) -----------


def _print_json(obj) -> None:
    from kit.core.console import out
    from kit.core.fsio import canonical_json

    out.print(canonical_json(obj), end="", markup=False, highlight=False)


@main.group("env", invoke_without_command=True, epilog=EPILOG_EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help="Print the fingerprint as canonical JSON.")
@click.option("--ffmpeg", "ffmpeg_path", help="Fingerprint this ffmpeg instead of the one runs would find.")
@click.pass_context
def env_cmd(ctx: click.Context, as_json: bool, ffmpeg_path: str | None) -> None:
    """Print this environment's fingerprint: what two runs must share to give identical results.

    \b
    Examples:
      ensemble-kit env
      ensemble-kit env --json > env.json
      ensemble-kit env check            # installed packages vs the lock
      ensemble-kit env export           # pixi.lock -> environments/<env>.conda-lock.yml
    """
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from kit.core.console import out
    from kit.corpus import ffmpeg as tools
    from kit.env import fingerprint as environment

    ff = tools.find_ffmpeg(ffmpeg_path, require_libvmaf=False) if ffmpeg_path else None
    fp = environment.fingerprint(ff)
    if as_json:
        _print_json({"fingerprint_id": environment.fingerprint_id(fp), "fingerprint": fp})
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    for label, value in environment.describe(fp):
        table.add_row(f"[bold]{label}[/bold]", value)
    out.print(table)


@env_cmd.command("check", epilog=EPILOG_EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help="Print the drift report as JSON.")
def env_check_cmd(as_json: bool) -> None:
    """Compare installed packages with the lock this environment came from (exit 3 on drift).

    Inside pixi (PIXI_ENVIRONMENT_NAME set): conda-meta records vs pixi.lock; otherwise installed
    distributions vs environments/<lock>.txt. Every difference is named.

    \b
    Examples:
      pixi run env-check
      ensemble-kit env check --json
    """
    from kit.core.console import out
    from kit.core.errors import PrereqError
    from kit.env import locks

    report = locks.check_drift()
    if as_json:
        _print_json(report.to_json())
    else:
        out.print(report.summary() if not report.differences else
                  f"{report.kind} lock {report.name!r} ({report.lock_path}):")
        for diff in report.differences:
            out.print(f"  {diff}", markup=False)
    if report.kind == "none":
        raise PrereqError("no lock to compare with on this platform", hint="use the pixi environments (docs/environments.md)")
    if report.differences:
        from kit.env.prereqs import FIX_LOCK

        raise PrereqError(f"{len(report.differences)} package(s) differ from the lock", hint=FIX_LOCK[report.kind])


@env_cmd.command("export", epilog=EPILOG_EXIT_CODES)
@click.option("--lock", "lock_path", type=click.Path(path_type=Path), default=Path("pixi.lock"), show_default=True,
              help="The pixi.lock to convert.")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("environments"), show_default=True,
              help="Where <env>.conda-lock.yml files go.")
@click.option("--environment", "-e", "envs", multiple=True, help="Only this pixi environment (repeatable; default all).")
def env_export_cmd(lock_path: Path, out_dir: Path, envs: tuple[str, ...]) -> None:
    """Turn pixi.lock into one conda-lock file per environment, for conda / micromamba users.

    \b
    Examples:
      ensemble-kit env export
      ensemble-kit env export -e cuda --out-dir /tmp/locks
      micromamba create -n ekit-cuda -f environments/cuda.conda-lock.yml
    """
    from kit.core.console import out
    from kit.env import locks

    for path in locks.export_conda_locks(lock_path, out_dir, envs):
        out.print(f"wrote {path}", markup=False)


@main.command("prereqs", epilog=EPILOG_EXIT_CODES)
@click.option("--encoders", help="Comma-separated encoders that must really encode (default: this box's family).")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
              help="Where the run will write (checked for space and write permission).")
@click.option("--ref-dir", type=click.Path(path_type=Path), help="Reference clips, to size the disk estimate.")
@click.option("--ffmpeg", "ffmpeg_path", help="ffmpeg binary to check (default: the one runs would find).")
@click.option("--strict", is_flag=True, help="Treat every WARN as a FAIL.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def prereqs_cmd(encoders: str | None, out_dir: Path, ref_dir: Path | None, ffmpeg_path: str | None,
                strict: bool, as_json: bool) -> None:
    """Check everything a run needs on this box: PASS / WARN / FAIL with what to do (exit 3 on FAIL).

    \b
    Examples:
      ensemble-kit prereqs
      ensemble-kit prereqs --encoders h264_nvenc,hevc_nvenc --out-dir /data/runs --strict
      pixi run -e cuda prereqs --json
    """
    from rich.table import Table

    from kit.core.console import out
    from kit.env import prereqs

    wanted = [e.strip() for e in encoders.split(",") if e.strip()] if encoders else None
    report = prereqs.run_prereqs(encoders=wanted, out_dir=out_dir, ref_dir=ref_dir, strict=strict, ffmpeg=ffmpeg_path)
    if as_json:
        _print_json(report.to_json())
    else:
        colour = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}
        table = Table(title="ensemble-kit prerequisites", title_justify="left")
        for col in ("check", "status", "detail", "what to do"):
            table.add_column(col, overflow="fold")
        for c in report.checks:
            table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/{colour[c.status]}]", c.detail, c.hint)
        out.print(table)
    prereqs.require(report)


@main.command("build-libvmaf", epilog=EPILOG_EXIT_CODES)
@click.option("--source", type=click.Path(path_type=Path), required=True,
              help="A vmaf checkout (or its libvmaf/ folder) to build.")
@click.option("--backend", type=click.Choice(["cpu", "cuda", "sycl"]), default="cpu", show_default=True)
@click.option("--dest", type=click.Path(path_type=Path), help="Install prefix (default binaries/<platform>/).")
@click.option("--meson-arg", "meson_args", multiple=True, help="Extra `meson setup` argument (repeatable), e.g. -Denable_float=true.")
def build_libvmaf_cmd(source: Path, backend: str, dest: Path | None, meson_args: tuple[str, ...]) -> None:
    """Build libvmaf's `vmaf` with meson + ninja into binaries/<platform>/ and prove it scores.

    The corpus's `--scorer vmaf` then uses it. For --backend cuda, a run that needs the GPU must
    succeed and the same run with no CUDA device must fail.

    \b
    Examples:
      git clone https://github.com/Netflix/vmaf && ensemble-kit build-libvmaf --source vmaf
      ensemble-kit build-libvmaf --source vmaf --backend cuda
    """
    from kit.core.console import info, out
    from kit.env import libvmaf_build

    info(f"building libvmaf ({backend}) from {source} with meson + ninja ...")
    built = libvmaf_build.build_libvmaf(source, backend=backend, dest=dest, meson_args=meson_args)
    out.print(f"built {built.path} (vmaf {built.version}, {built.backend}): {built.evidence}", markup=False)


# ---- pipeline, bundle, verify, compare, dist (issue: pipeline) ---------------------------------


DEMO_TRAIN = {"epochs": 100}  # kit.pipeline.DEMO_EPOCHS, shown in --help (test checks they agree)


def _dataclass_options(cls, prefix: str = "", help_prefix: str = ""):
    """One --flag per dataclass field (TrainConfig): the pass-through stays in step with the config."""
    from dataclasses import fields

    def decorate(fn):
        for f in reversed(fields(cls)):
            flag = f"--{prefix}{f.name.replace('_', '-')}"
            fn = click.option(flag, f"{prefix.replace('-', '_')}{f.name}", type=type(f.default), default=None,
                              help=f"{help_prefix}{f.name} (default {f.default}"
                                   + (f"; demo {DEMO_TRAIN[f.name]})." if f.name in DEMO_TRAIN else ")."))(fn)
        return fn

    return decorate


# The gate's thresholds (kit.results.gate.Thresholds fields; tests/test_pipeline.py checks they stay in step).
# Spelled out so `ensemble-kit --help` does not import torch through kit.results.gate.
PIPELINE_GATE_FLAGS = {"mean_plcc": 0.95, "plcc_spread_max": 0.005, "per_seed_min": 0.95}


def _pipeline_options(fn):
    from kit.train.config import TrainConfig

    for name in reversed(PIPELINE_GATE_FLAGS):
        fn = click.option(f"--gate-{name.replace('_', '-')}", f"gate_{name}", type=float, default=None,
                          help=f"Gate threshold {name} (default {PIPELINE_GATE_FLAGS[name]}).")(fn)
    fn = _dataclass_options(TrainConfig, "", "Training ")(fn)
    return fn


@main.command("pipeline", epilog=EPILOG_EXIT_CODES)
@click.option("--ref-dir", type=click.Path(path_type=Path), default=None,
              help="Folder of reference clips; without it the built-in demo clips are used.")
@click.option("--demo", is_flag=True, help="Run on the built-in demo clips (the default when --ref-dir is not given).")
@click.option("--encoders", default=None, help="Comma-separated encoders (default: this box's encoders that pass a test encode).")
@click.option("--cqs", default=None, help="Comma-separated quality values, lower = better (default 19,25,31,37; demo 22,30,38).")
@click.option("--seeds", default="0,1,2,3,4", show_default=True, help="Training seeds, e.g. 0,1,2,3,4 or 0-4.")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None,
              help="Run directory (default runs/demo for the demo, runs/pipeline otherwise).")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=None, help="Corpus cells in parallel (default: one per core).")
@click.option("--ffmpeg", "ffmpeg_path", default=None, help="ffmpeg binary with libvmaf (default: found automatically).")
@click.option("--fresh", is_flag=True, help="Move an existing run in --out-dir aside (<out-dir>.old-<utc>) and start anew.")
@click.option("--quiet", "-q", is_flag=True, help="Only the result line.")
@click.option("--demo-frames", type=click.IntRange(min=2), default=None, help="Frames per demo clip (default 30).")
@click.option("--demo-size", default=None, help="Demo clip size WxH (default 192x108).")
@_pipeline_options
def pipeline_cmd(ref_dir: Path | None, demo: bool, encoders: str | None, cqs: str | None, seeds: str,
                 out_dir: Path | None, jobs: int | None, ffmpeg_path: str | None, fresh: bool, quiet: bool,
                 demo_frames: int | None, demo_size: str | None, **overrides) -> None:
    """The whole job: prereqs, corpus, train, verdict, export (on PROMOTE), report, bundle.

    A rerun with the same options resumes (finished cells and steps are not redone); other options
    would mix results and are refused unless --fresh. Exit 0 PROMOTE, 1 HOLD.

    \b
    Examples:
      ensemble-kit pipeline                                  # the demo, into runs/demo
      ensemble-kit pipeline --ref-dir refs/ --out-dir runs/box1
      ensemble-kit pipeline --ref-dir refs/ --encoders h264_nvenc,hevc_nvenc --cqs 22,27,32
    """
    from kit import pipeline
    from kit.core.errors import BadInput
    from kit.corpus import encoders as enc_table
    from kit.train.config import parse_seeds

    if demo and ref_dir is not None:
        raise BadInput("--demo and --ref-dir are mutually exclusive", hint="pass one of them")
    train = {k: v for k, v in overrides.items() if not k.startswith("gate_") and v is not None}
    gate = {k.removeprefix("gate_"): v for k, v in overrides.items() if k.startswith("gate_") and v is not None}
    options = pipeline.PipelineOptions(
        out_dir=out_dir or Path("runs/demo" if ref_dir is None else "runs/pipeline"),
        ref_dir=ref_dir,
        encoders=tuple(e.strip() for e in encoders.split(",") if e.strip()) if encoders else None,
        cqs=enc_table.parse_cqs(cqs) if cqs else None,
        seeds=parse_seeds(seeds),
        jobs=jobs,
        train_overrides=train,
        gate_overrides=gate,
        ffmpeg=ffmpeg_path,
        fresh=fresh,
        quiet=quiet,
        demo_frames=demo_frames or pipeline.DEMO_FRAMES,
        demo_size=pipeline.parse_size(demo_size) if demo_size else pipeline.DEMO_CLIP_SIZE,
    )
    result = pipeline.run_pipeline(options)
    if not quiet:
        err.print(result.recommendation, markup=False)
        err.print(f"done in {result.wall_s:.1f} s; mail back {result.bundle}", markup=False)
    click.echo(f"{result.verdict} {result.bundle}")
    if result.verdict != "PROMOTE":
        sys.exit(int(ExitCode.HOLD))


@main.command("bundle", epilog=EPILOG_EXIT_CODES)
@click.argument("run_dir", type=click.Path(path_type=Path), default=Path("runs/demo"))
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Where to write the tarball (a file or a folder); default: inside RUN_DIR.")
def bundle_cmd(run_dir: Path, out: Path | None) -> None:
    """Pack this run's results into ensemble-results-<platform>-<box>-<utc>.tar.gz.

    Only files this run wrote go in, hashed in manifest.json; the same run always gives the same bytes.

    \b
    Example:
      ensemble-kit bundle runs/demo
    """
    from kit.results import bundle

    result = bundle.make_bundle(run_dir, out)
    err.print(f"bundle: {len(result.manifest['files'])} files, verdict {result.manifest['verdict']['verdict']}")
    err.print(f"sha256: {result.sha256}")
    click.echo(str(result.path))


@main.command("verify", epilog=EPILOG_EXIT_CODES)
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--max-bytes", type=click.IntRange(min=1), default=None,
              help="Refuse bundles whose content exceeds this many bytes (default 8 GiB).")
def verify_cmd(bundle_path: Path, max_bytes: int | None) -> None:
    """Check a returned bundle: safe extraction, every file's sha256, the manifest, the schema version.

    \b
    Example:
      ensemble-kit verify ensemble-results-linux-cuda-x86_64-3f9c0a1b2c4d-20261125T101500Z.tar.gz
    """
    from kit.results import bundle

    result = bundle.verify(bundle_path, max_total_bytes=max_bytes or bundle.DEFAULT_MAX_BUNDLE_BYTES)
    m = result.manifest
    click.echo(f"OK {bundle_path}: {result.n_files} files, {result.total_bytes} bytes, verdict {m['verdict']['verdict']}, "
               f"platform {m.get('platform')}, box {m.get('box_id')}, kit {m.get('kit_version')}")
    click.echo(f"sha256 {result.sha256}")


@main.command("compare", epilog=EPILOG_EXIT_CODES)
@click.argument("lead", type=click.Path(path_type=Path))
@click.argument("collab", type=click.Path(path_type=Path))
@click.option("--plcc-tol", type=float, default=0.0, show_default=True,
              help="Largest |PLCC difference| per seed and per fold still counted as reproduced (0 = exact).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="List every fold's PLCC.")
def compare_cmd(lead: Path, collab: Path, plcc_tol: float, as_json: bool, verbose: bool) -> None:
    """Does COLLAB reproduce LEAD? Bundles or run directories; exit 0 REPRODUCED, 1 DIVERGED.

    Compares verdicts, per-seed and per-fold PLCCs, shared sources and environments.

    \b
    Examples:
      ensemble-kit compare runs/lead ensemble-results-linux-cpu-x86_64-ab12cd34ef56-20261125T101500Z.tar.gz
      ensemble-kit compare lead.tar.gz collab.tar.gz --plcc-tol 0.005   # different hardware
    """
    from kit.core.fsio import canonical_json
    from kit.results import bundle

    cmp = bundle.compare(lead, collab, plcc_tol=plcc_tol)
    if as_json:
        click.echo(canonical_json(cmp.to_dict()), nl=False)
    else:
        for line in bundle.comparison_lines(cmp, verbose=verbose):
            click.echo(line)
    if not cmp.reproduced:
        sys.exit(int(ExitCode.HOLD))


@main.command("dist", epilog=EPILOG_EXIT_CODES)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Tarball path or folder (default: dist/ in the checkout).")
@click.option("--with-wheels", "with_wheels", metavar="PLATFORM", default=None,
              help="Add the locked wheels for PLATFORM (linux-64, linux-aarch64, osx-arm64, osx-64) for offline installs.")
def dist_cmd(out: Path | None, with_wheels: str | None) -> None:
    """Build the distribution tarball a collaborator unpacks and runs with ./run (no clone needed).

    \b
    Examples:
      ensemble-kit dist                          # dist/ensemble-kit-<version>.tar.gz, < 50 MiB
      ensemble-kit dist --with-wheels linux-64   # + every locked wheel, installs offline
    """
    from kit.env import dist

    result = dist.make_dist(out, with_wheels=with_wheels)
    err.print(f"dist: {result.n_files} files, {result.size / 2**20:.1f} MiB, sha256 {result.sha256}")
    click.echo(str(result.path))


# ---- reference packs (issue: refs) -------------------------------------------------------------


class _RefsProgress:
    """A rich bar over raw bytes at a terminal, a line per source elsewhere; called as (name, bytes, total)."""

    def __init__(self, label: str) -> None:
        from rich import progress as rp

        from kit.core.console import progress_enabled

        self.label = label
        self.bar = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.DownloadColumn(),
                               rp.TransferSpeedColumn(), rp.TimeRemainingColumn(), console=err) if progress_enabled() else None
        self.task = None

    def __enter__(self) -> _RefsProgress:
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def __call__(self, name: str, nbytes: int, total: int) -> None:
        if self.bar is None:
            if name:
                err.print(f"  {self.label}: {name} done")
            return
        if self.task is None:
            self.task = self.bar.add_task(self.label, total=total)
        self.bar.update(self.task, advance=nbytes, description=f"{self.label} {name}".rstrip())


_JOBS_HELP = "Sources processed at once (default: all cores); each drives its own ffmpeg."


@main.group("refs")
def refs_group() -> None:
    """Ship reference clips bit-exactly: lossless packs with a sha256 of every source's raw frames.

    \b
    Example (lead user packs, collaborator unpacks, both run on the same frames):
      ensemble-kit refs pack --ref-dir refs/ --out refs-pack.tar
      ensemble-kit refs unpack refs-pack.tar --out refs/
      ensemble-kit refs verify refs/
    """


@refs_group.command("pack")
@click.option("--ref-dir", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Folder of reference clips (.yuv with geometry, .y4m, .mkv/.mp4...).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Pack to write: a directory, or a single .tar / .tar.gz file.")
@click.option("--codec", type=click.Choice(["ffv1", "x265-lossless", "av1-lossless"]), default="ffv1",
              show_default=True, help="Lossless codec (FFV1 is in every ffmpeg build and stores every layout).")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help=_JOBS_HELP)
@click.option("--ffmpeg", "ffmpeg_path", default=None, help="ffmpeg binary to use (default: found automatically).")
@click.option("--width", type=int, default=None, help="Fallback width for .yuv files without geometry.")
@click.option("--height", type=int, default=None, help="Fallback height for .yuv files without geometry.")
@click.option("--pix-fmt", default=None, help="Fallback pixel format for .yuv files (e.g. yuv420p10le).")
@click.option("--fps", type=float, default=None, help="Fallback frame rate for .yuv files.")
def refs_pack_cmd(ref_dir: Path, out: Path, codec: str, jobs: int | None, ffmpeg_path: str | None,
                  width: int | None, height: int | None, pix_fmt: str | None, fps: float | None) -> None:
    """Encode every reference losslessly into a pack (directory or tarball) with refs.json.

    Every member is decoded again and compared with the source's raw frames before it is kept.
    Rerunning an interrupted pack keeps the members already finished.

    \b
    Examples:
      ensemble-kit refs pack --ref-dir refs/ --out refs-pack.tar
      ensemble-kit refs pack --ref-dir refs/ --out refs-pack/ --codec x265-lossless --jobs 4
    """
    from kit import refs
    from kit.corpus.ffmpeg import find_ffmpeg

    ff = find_ffmpeg(ffmpeg_path, require_libvmaf=False)
    with _RefsProgress("pack") as progress:
        result = refs.pack(ref_dir, out, codec=codec, jobs=jobs, ff=ff, width=width, height=height,
                           pix_fmt=pix_fmt, fps=fps, progress=progress)
    mib = result.raw_bytes / 2**20
    err.print(f"packed {len(result.manifest.sources)} source(s): {mib:.1f} MiB raw -> "
              f"{result.packed_bytes / 2**20:.1f} MiB ({result.packed_bytes / max(1, result.raw_bytes):.1%}), "
              f"{mib / max(result.seconds, 1e-9):.1f} MiB/s" + (f", {result.reused} kept from before" if result.reused else ""))
    err.print(f"unpack with: ensemble-kit refs unpack {out} --out <dir>")
    click.echo(str(out))


@refs_group.command("unpack")
@click.argument("pack_path", metavar="PACK", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory for the raw reference files.")
@click.option("--y4m", is_flag=True, help="Write .y4m files instead of .yuv + .json geometry sidecars.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help=_JOBS_HELP)
@click.option("--ffmpeg", "ffmpeg_path", default=None, help="ffmpeg binary to use (default: found automatically).")
def refs_unpack_cmd(pack_path: Path, out: Path, y4m: bool, jobs: int | None, ffmpeg_path: str | None) -> None:
    """Decode a pack to raw files that --ref-dir finds, checking every raw-frame sha256.

    A file appears only once its frames match refs.json; a damaged member is named and exits 2.
    Rerunning skips files already verified.

    \b
    Examples:
      ensemble-kit refs unpack refs-pack.tar --out refs/
      ensemble-kit corpus --ref-dir refs/ ...
    """
    from kit import refs
    from kit.corpus.ffmpeg import find_ffmpeg

    ff = find_ffmpeg(ffmpeg_path, require_libvmaf=False)
    with _RefsProgress("unpack") as progress:
        result = refs.unpack(pack_path, out, y4m=y4m, jobs=jobs, ff=ff, progress=progress)
    mib = result.raw_bytes / 2**20
    err.print(f"unpacked and verified {len(result.files)} source(s), {mib:.1f} MiB raw"
              + (f" ({result.reused} already verified)" if result.reused else "")
              + f", {mib / max(result.seconds, 1e-9):.1f} MiB/s")
    click.echo(str(out))


@refs_group.command("verify")
@click.argument("ref_dir", metavar="DIR", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--refs-json", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="refs.json to check against (default: DIR/refs.json).")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help=_JOBS_HELP)
@click.option("--ffmpeg", "ffmpeg_path", default=None, help="ffmpeg binary to use (default: found automatically).")
def refs_verify_cmd(ref_dir: Path, refs_json: Path | None, jobs: int | None, ffmpeg_path: str | None) -> None:
    """Check a reference directory against refs.json without unpacking (raw-frame sha256 + geometry).

    \b
    Examples:
      ensemble-kit refs verify refs/
      ensemble-kit refs verify my-copy/ --refs-json refs-pack/refs.json
    """
    from kit import refs
    from kit.core.errors import BadInput
    from kit.corpus.ffmpeg import find_ffmpeg

    ff = find_ffmpeg(ffmpeg_path, require_libvmaf=False)
    report = refs.verify(ref_dir, refs_json=refs_json, jobs=jobs, ff=ff)
    for row in report.rows:
        click.echo(f"{row.status:8} {row.name:24} {row.file or '-'}" + (f"  ({row.detail})" if row.detail else ""))
    if not report.ok:
        bad = ", ".join(f"{r.file or r.name} ({r.status})" for r in report.problems())
        raise BadInput(f"{ref_dir} does not match refs.json: {bad}",
                       hint="re-unpack those sources with `ensemble-kit refs unpack`, or re-copy them")
