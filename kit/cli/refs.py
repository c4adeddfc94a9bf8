"""`ensemble-kit refs pack | unpack | verify`: reference clips shipped bit-exactly."""

from __future__ import annotations

from pathlib import Path

import click

from kit.cli.options import ffmpeg_option, geometry, geometry_options, jobs_option
from kit.cli.output import emit, note
from kit.core.console import Progress
from kit.core.errors import BadInput
from kit.corpus.ffmpeg import find_ffmpeg
from kit.refs import pack, unpack, verify
from kit.refs.frames import ProgressFn

JOBS_HELP = "Sources processed at once (default: all cores); each drives its own ffmpeg."
FFMPEG_HELP = "ffmpeg binary to use (default: found automatically)."


def _bytes_progress(bar: Progress) -> ProgressFn:
    """kit.refs' (name, bytes, total) callback -> the shared progress display, counting raw bytes."""
    def callback(name: str, nbytes: int, total: int) -> None:
        if name:
            bar.advance(nbytes, name)
        else:
            bar.plan(total)

    return callback


@click.group("refs")
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
@click.option("--codec", type=click.Choice(list(pack.CODECS)), default=pack.DEFAULT_CODEC,
              show_default=True, help="Lossless codec (FFV1 is in every ffmpeg build and stores every layout).")
@jobs_option(JOBS_HELP)
@ffmpeg_option(FFMPEG_HELP)
@geometry_options(".yuv references")
def refs_pack_cmd(ref_dir: Path, out: Path, codec: str, jobs: int | None, ffmpeg_path: str | None,
                  width: int | None, height: int | None, pix_fmt: str | None, fps: str | None) -> None:
    """Encode every reference losslessly into a pack (directory or tarball) with refs.json.

    Every member is decoded again and compared with the source's raw frames before it is kept.
    Rerunning an interrupted pack keeps the members already finished.

    \b
    Examples:
      ensemble-kit refs pack --ref-dir refs/ --out refs-pack.tar
      ensemble-kit refs pack --ref-dir refs/ --out refs-pack/ --codec x265-lossless --jobs 4
    """
    ff = find_ffmpeg(ffmpeg_path, require_libvmaf=False)
    with Progress("pack", unit="bytes") as bar:
        result = pack.pack(ref_dir, out, codec=codec, jobs=jobs, ff=ff, progress=_bytes_progress(bar),
                           **geometry(width, height, pix_fmt, fps))
    mib = result.raw_bytes / 2**20
    note(f"packed {len(result.manifest.sources)} source(s): {mib:.1f} MiB raw -> "
         f"{result.packed_bytes / 2**20:.1f} MiB ({result.packed_bytes / max(1, result.raw_bytes):.1%}), "
         f"{mib / max(result.seconds, 1e-9):.1f} MiB/s" + (f", {result.reused} kept from before" if result.reused else ""))
    note(f"unpack with: ensemble-kit refs unpack {out} --out <dir>")
    emit(None, text=str(out))


@refs_group.command("unpack")
@click.argument("pack_path", metavar="PACK", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory for the raw reference files.")
@click.option("--y4m", is_flag=True, help="Write .y4m files instead of .yuv + .json geometry sidecars.")
@jobs_option(JOBS_HELP)
@ffmpeg_option(FFMPEG_HELP)
def refs_unpack_cmd(pack_path: Path, out: Path, y4m: bool, jobs: int | None, ffmpeg_path: str | None) -> None:
    """Decode a pack to raw files that --ref-dir finds, checking every raw-frame sha256.

    A file appears only once its frames match refs.json; a damaged member is named and exits 2.
    Rerunning skips files already verified.

    \b
    Examples:
      ensemble-kit refs unpack refs-pack.tar --out refs/
      ensemble-kit corpus --ref-dir refs/ ...
    """
    ff = find_ffmpeg(ffmpeg_path, require_libvmaf=False)
    with Progress("unpack", unit="bytes") as bar:
        result = unpack.unpack(pack_path, out, y4m=y4m, jobs=jobs, ff=ff, progress=_bytes_progress(bar))
    mib = result.raw_bytes / 2**20
    note(f"unpacked and verified {len(result.files)} source(s), {mib:.1f} MiB raw"
         + (f" ({result.reused} already verified)" if result.reused else "")
         + f", {mib / max(result.seconds, 1e-9):.1f} MiB/s")
    emit(None, text=str(out))


@refs_group.command("verify")
@click.argument("ref_dir", metavar="DIR|PACK", type=click.Path(path_type=Path, exists=True))
@click.option("--refs-json", type=click.Path(path_type=Path, exists=True), default=None,
              help="refs.json to check against: the file, a pack folder or a pack .tar (default: DIR/refs.json).")
@jobs_option(JOBS_HELP)
@ffmpeg_option(FFMPEG_HELP)
def refs_verify_cmd(ref_dir: Path, refs_json: Path | None, jobs: int | None, ffmpeg_path: str | None) -> None:
    """Check reference clips (a folder, a pack folder or a pack .tar) against refs.json (raw-frame sha256 + geometry).

    \b
    Examples:
      ensemble-kit refs verify refs/
      ensemble-kit refs verify refs-pack.tar
      ensemble-kit refs verify my-copy/ --refs-json refs-pack.tar
    """
    ff = find_ffmpeg(ffmpeg_path, require_libvmaf=False)
    report = verify.verify(ref_dir, refs_json=refs_json, jobs=jobs, ff=ff)
    emit(None, text=[f"{row.status:8} {row.name:24} {row.file or '-'}" + (f"  ({row.detail})" if row.detail else "")
                     for row in report.rows])
    if not report.ok:
        bad = ", ".join(f"{r.file or r.name} ({r.status})" for r in report.problems())
        raise BadInput(f"{ref_dir} does not match refs.json: {bad}",
                       hint="re-unpack those sources with `ensemble-kit refs unpack`, or re-copy them")


COMMANDS = (refs_group,)
