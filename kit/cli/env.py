"""`env` (+ `env check`, `env export`), `prereqs`, `build-libvmaf` and `dist`: this box and the kit's own files."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from kit.cli.options import EPILOG_EXIT_CODES, ffmpeg_option, json_option, out_dir_option
from kit.cli.output import emit, note
from kit.core.errors import PrereqError
from kit.corpus import ffmpeg, vmaf_cli
from kit.corpus.encoders import parse_encoders
from kit.env import dist, libvmaf_build, lockfiles, locks, prereqs
from kit.env import fingerprint as env_fingerprint


@click.group("env", invoke_without_command=True, epilog=EPILOG_EXIT_CODES)
@json_option("Print the fingerprint (result_env + host) and the result_env id as canonical JSON.")
@ffmpeg_option("Fingerprint this ffmpeg instead of the one runs would find.")
@click.pass_context
def env_cmd(ctx: click.Context, as_json: bool, ffmpeg_path: str | None) -> None:
    """Print this environment's fingerprint: result_env (what two runs must share to give identical
    results; its id is compared) and host (this machine: recorded, never compared).

    \b
    Examples:
      ensemble-kit env
      ensemble-kit env --json > env.json
      ensemble-kit env check            # installed packages vs the lock
      ensemble-kit env export           # pixi.lock -> environments/<env>.conda-lock.yml
    """
    if ctx.invoked_subcommand is not None:
        return
    ff = ffmpeg.find_ffmpeg(ffmpeg_path, require_libvmaf=False) if ffmpeg_path else None
    fp, fp_id = env_fingerprint.current(ff, scorer=_default_scorer(ff))
    table = Table(show_header=False, box=None, pad_edge=False)
    for label, value in env_fingerprint.describe(fp):
        table.add_row(f"[bold]{label}[/bold]", escape(value))
    emit({"fingerprint_id": fp_id, "result_env_id": fp_id, "fingerprint": fp}, as_json, text=[table])


def _default_scorer(ff: ffmpeg.FFmpeg | None) -> dict[str, object] | None:
    """The scorer a run with `--scorer auto` would use (None: the filter of the ffmpeg the fingerprint finds)."""
    cli = vmaf_cli.choose_scorer("auto")
    return vmaf_cli.scorer_fingerprint(cli, ff.libvmaf_version if ff else None) if cli else None


@env_cmd.command("check", epilog=EPILOG_EXIT_CODES)
@json_option("Print the drift report as JSON.")
def env_check_cmd(as_json: bool) -> None:
    """Compare installed packages with the lock this environment came from (exit 3 on drift).

    Inside pixi (PIXI_ENVIRONMENT_NAME set): conda-meta records vs pixi.lock; otherwise installed
    distributions vs environments/<lock>.txt. Every difference is named.

    \b
    Examples:
      pixi run env-check
      ensemble-kit env check --json
    """
    report = locks.check_drift()
    head = report.summary() if not report.differences else f"{report.kind} lock {report.name!r} ({report.lock_path}):"
    emit(report.to_json(), as_json, text=[head, *(f"  {diff}" for diff in report.differences)])
    if report.kind == "none":
        raise PrereqError("no lock to compare with on this platform", hint="use the pixi environments (docs/environments.md)")
    if report.differences:
        raise PrereqError(f"{len(report.differences)} package(s) differ from the lock", hint=prereqs.FIX_LOCK[report.kind])


@env_cmd.command("export", epilog=EPILOG_EXIT_CODES)
@click.option("--lock", "lock_path", type=click.Path(path_type=Path), default=Path("pixi.lock"), show_default=True,
              help="The pixi.lock to convert.")
@out_dir_option(default=Path("environments"), help="Where <env>.conda-lock.yml files go.")
@click.option("--environment", "-e", "envs", multiple=True, help="Only this pixi environment (repeatable; default all).")
def env_export_cmd(lock_path: Path, out_dir: Path, envs: tuple[str, ...]) -> None:
    """Turn pixi.lock into one conda-lock file per environment, for conda / micromamba users.

    \b
    Examples:
      ensemble-kit env export
      ensemble-kit env export -e cuda --out-dir /tmp/locks
      micromamba create -n ekit-cuda -f environments/cuda.conda-lock.yml
    """
    emit(None, text=[f"wrote {path}" for path in locks.export_conda_locks(lock_path, out_dir, envs)])


@click.command("prereqs", epilog=EPILOG_EXIT_CODES)
@click.option("--encoders", help="Comma-separated encoders that must really encode (default: this box's family).")
@out_dir_option(default=Path("runs"), help="Where the run will write (checked for space and write permission).")
@click.option("--ref-dir", type=click.Path(path_type=Path), help="Reference clips, to size the disk estimate.")
@ffmpeg_option("ffmpeg binary to check (default: the one runs would find).")
@click.option("--strict", is_flag=True, help="Treat every WARN as a FAIL.")
@json_option("Print the checks as JSON.")
def prereqs_cmd(encoders: str | None, out_dir: Path, ref_dir: Path | None, ffmpeg_path: str | None,
                strict: bool, as_json: bool) -> None:
    """Check everything a run needs on this box: PASS / WARN / FAIL with what to do (exit 3 on FAIL).

    \b
    Examples:
      ensemble-kit prereqs
      ensemble-kit prereqs --encoders h264_nvenc,hevc_nvenc --out-dir /data/runs --strict
      pixi run -e cuda prereqs --json
    """
    wanted = list(parse_encoders(encoders)) if encoders else None
    report = prereqs.run_prereqs(encoders=wanted or None, out_dir=out_dir, ref_dir=ref_dir, strict=strict,
                                 ffmpeg=ffmpeg_path)
    colour = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}
    table = Table(title="ensemble-kit prerequisites", title_justify="left")
    for col in ("check", "status", "detail", "what to do"):
        table.add_column(col, overflow="fold")
    for c in report.checks:
        table.add_row(escape(c.name), f"[{colour[c.status]}]{c.status}[/{colour[c.status]}]", escape(c.detail),
                      escape(c.hint))
    emit(report.to_json(), as_json, text=[table])
    prereqs.require(report)


@click.command("build-libvmaf", epilog=EPILOG_EXIT_CODES)
@click.option("--source", type=click.Path(path_type=Path), required=True,
              help="A vmaf checkout (lusoris fork or Netflix; or its libvmaf/ folder) to build.")
@click.option("--backend", type=click.Choice(list(libvmaf_build.BACKENDS)), default="cpu", show_default=True,
              help="cuda/sycl: built as libvmaf documents them, staged only after they ran on this box's GPU.")
@click.option("--dest", type=click.Path(path_type=Path), help="Where bin/vmaf goes (default binaries/<platform>/).")
@click.option("--meson-arg", "meson_args", multiple=True, help="Extra `meson setup` argument (repeatable), e.g. -Denable_float=true.")
@json_option("Print what was built (path, sha256, version, backend, build time, size, proof) as JSON.")
def build_libvmaf_cmd(source: Path, backend: str, dest: Path | None, meson_args: tuple[str, ...], as_json: bool) -> None:
    """Build libvmaf's `vmaf` CLI with meson + ninja, prove it against ffmpeg's libvmaf filter, stage it.

    Missing tools are named first with the line that installs them (pip install meson ninja;
    apt-get install build-essential nasm xxd). The build directory sits inside the tree
    (libvmaf/build-ekit-*). The result must score a generated pair within 1e-4 of ffmpeg's libvmaf
    filter on every feature; for --backend cuda it must also run on the GPU without falling back to
    the CPU, which needs an NVIDIA GPU and driver on this box (docs/environments.md). Then
    binaries/<platform>/bin/vmaf and its record vmaf.json (sha256, version, backend, source commit)
    are staged; `--scorer vmaf` uses it, and `--scorer auto` does when it is a GPU build.

    \b
    Examples:
      ensemble-kit build-libvmaf --source vmaf                  # a checkout of the lusoris fork
      ensemble-kit build-libvmaf --source vmaf --backend cuda   # on an NVIDIA box
    """
    note(f"building libvmaf ({backend}) from {source} with meson + ninja (the fork's CPU build: 1-2 min on 2 cores, "
         "CUDA several more); it is staged only once it agrees with ffmpeg's libvmaf filter"
         + (f" and ran on this box's {backend} GPU" if backend != "cpu" else "") + " ...")
    built = libvmaf_build.build_libvmaf(source, backend=backend, dest=dest, meson_args=meson_args)
    cli = built.cli
    doc = {"vmaf": str(cli.path), "record": str(built.record), "sha256": cli.sha256, "version": cli.version,
           "backend": cli.backend, "run_flags": list(cli.run_flags), "source_commit": cli.source_commit,
           "build_seconds": round(built.build_s, 1), "size_bytes": built.size_bytes, "proof": built.evidence,
           "meson_options": list(built.options)}
    emit(doc, as_json, text=[f"built in {built.build_s:.0f} s: {cli.path} ({built.size_bytes:,} bytes, vmaf "
                             f"{cli.version}, {cli.backend}, sha256 {cli.sha256[:16]}), record {built.record}",
                             f"proof: {built.evidence}"])


@click.command("dist", epilog=EPILOG_EXIT_CODES)
@click.option("--out", type=click.Path(), default=None,
              help="Tarball path, or a folder (an existing one, or a path ending in /); default: dist/ in the checkout.")
@click.option("--with-wheels", "with_wheels", type=click.Choice([lock.name for lock in lockfiles.LOCKS]), default=None,
              help="Add every wheel of this pip lock (kit/locks/<LOCK>.txt) for offline installs.")
def dist_cmd(out: str | None, with_wheels: str | None) -> None:
    """Build the distribution tarball a collaborator unpacks and runs with ./run (no clone needed).

    \b
    Examples:
      ensemble-kit dist                              # dist/ensemble-kit-<version>.tar.gz, < 50 MiB
      ensemble-kit dist --with-wheels linux-64-cpu   # + every locked wheel, installs offline
    """
    result = dist.make_dist(out, with_wheels=with_wheels)
    note(f"dist: {result.n_files} files, {result.size / 2**20:.1f} MiB, sha256 {result.sha256}")
    emit(None, text=str(result.path))


COMMANDS = (env_cmd, prereqs_cmd, build_libvmaf_cmd, dist_cmd)
