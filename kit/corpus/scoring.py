"""Running libvmaf and parsing its per-frame features.

The distorted stream is decoded straight into ffmpeg's libvmaf filter next to the reference (no decoded
YUV ever touches the disk). Frames are paired by index (`setpts=N` on both sides), so container
timestamps, B-frame delays or raw elementary streams cannot shift the pairing. A score is only accepted
when every frame carries every requested key (libvmaf with n_threads > 0 silently drops a feature that
fails) and the distorted stream has exactly the reference's frame count.

The standalone `vmaf` CLI (`kit.corpus.vmaf_cli`) is the other scorer: two ffmpeg decoders write raw
frames into FIFOs that it reads (still no decoded clip on disk; raw rather than Y4M because the CLI's
Y4M reader has no 16-bit layouts). Its failures are reported in causal order: a decoder that failed on
its own first, then vmaf's own failure or its fall back from a GPU backend to the CPU, then a frame
count that differs from the reference's; a decoder that died of a broken pipe only because vmaf
stopped reading is a consequence, not a cause.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kit.core import proc
from kit.core.errors import BadInput, WorkFailed
from kit.core.fsio import temp_dir
from kit.core.proc import STDERR_TAIL, ToolFailed
from kit.core.schema import DEFAULT_VMAF_MODEL, LIBVMAF_KEYS
from kit.corpus.ffmpeg import FFmpeg
from kit.corpus.geometry import check_vmaf_size, vmaf_pix_fmt, vmaf_raw_layout
from kit.corpus.sources import Source, open_source
from kit.corpus.vmaf_cli import BackendFallback, VmafCli, fallback_line

# ---- parsing -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScoreResult:
    frames: list[dict[str, float]]  # per frame: vmaf + FEATURES under their canonical names
    libvmaf_pooled: dict[str, float]  # libvmaf's own pooled vmaf (mean, harmonic_mean, min, max)
    libvmaf_version: str
    model: str
    score_time_ms: float
    backend: str = "ffmpeg-libvmaf"
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    def pooled(self) -> dict[str, float]:
        """Mean of the per-frame values (libvmaf's default pooling), per canonical key."""
        return {k: math.fsum(f[k] for f in self.frames) / len(self.frames) for k in LIBVMAF_KEYS}


def _number(value: object) -> float:
    """A metric value; libvmaf writes null for NaN/Inf, which becomes NaN (and then a 'non-finite' failure)."""
    if value is None:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def parse_vmaf_json(text: str, *, expected_frames: int | None, stage: str = "score") -> tuple[list[dict[str, float]], dict[str, float], str]:
    """libvmaf JSON log -> (frames, pooled vmaf, version); missing keys or a wrong frame count -> ToolFailed."""
    try:
        log = json.loads(text)
        raw_frames = log["frames"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ToolFailed(stage, f"libvmaf wrote no readable JSON log ({exc})") from None
    frames: list[dict[str, float]] = []
    for i, fr in enumerate(raw_frames):
        metrics = fr.get("metrics", {})
        missing = [key for key in LIBVMAF_KEYS.values() if key not in metrics]
        if missing:
            raise ToolFailed(stage, f"libvmaf frame {i} lacks {', '.join(missing)} (a feature failed silently)")
        if fr.get("frameNum", i) != i:
            raise ToolFailed(stage, f"libvmaf frames out of order at {i} (frameNum {fr.get('frameNum')})")
        values = {name: _number(metrics[key]) for name, key in LIBVMAF_KEYS.items()}
        if not all(math.isfinite(v) for v in values.values()):
            raise ToolFailed(stage, f"libvmaf frame {i} has a non-finite value: {values}")
        frames.append(values)
    if not frames:
        raise ToolFailed(stage, "the distorted stream decoded to 0 frames")
    if expected_frames is not None and len(frames) != expected_frames:
        raise ToolFailed(stage, f"the encode decodes to {len(frames)} frames but the reference has {expected_frames}")
    pooled = log.get("pooled_metrics", {}).get("vmaf", {})
    return frames, {k: float(v) for k, v in pooled.items()}, str(log.get("version", "unknown"))


# ---- scoring -------------------------------------------------------------------------------------------

def _libvmaf_filter(pix_fmt: str, *, model: str, n_threads: int) -> str:
    """Pair frames by index; stop at the shorter stream (framesync would otherwise repeat the last frame of
    a short encode and hide it), so a log with fewer frames than the reference exposes a short encode."""
    pair = f"settb=1,setpts=N,format={pix_fmt}"
    return (f"[0:v]{pair}[dis];[1:v]{pair}[ref];[dis][ref]libvmaf=model=version={model}:n_threads={n_threads}"
            ":log_fmt=json:log_path=vmaf.json:shortest=1:eof_action=endall")


def score(ff: FFmpeg, ref: Source, dis_input_args: Sequence[str], *, n_threads: int = 1, model: str = DEFAULT_VMAF_MODEL,
          expected_frames: int | None = None, timeout: float | None = None, workdir: Path | None = None,
          vmaf_cli: VmafCli | None = None) -> ScoreResult:
    """Score a distorted input (ffmpeg input args ending in `-i path`) against a reference source.

    `expected_frames` defaults to the reference's frame count. `vmaf_cli` selects the standalone vmaf
    CLI (fed through FIFOs, still no YUV on disk) instead of ffmpeg's libvmaf filter.
    """
    expected = ref.n_frames if expected_frames is None else expected_frames
    with contextlib.ExitStack() as stack:
        wd = workdir or Path(stack.enter_context(temp_dir("score")))
        log = wd / "vmaf.json"
        log.unlink(missing_ok=True)
        overfed: list[str] = []
        if vmaf_cli is not None:
            ms, stderr, overfed = _score_vmaf_cli(vmaf_cli, ff, ref, dis_input_args, n_threads=n_threads, model=model,
                                                  timeout=timeout, wd=wd)
            backend, extra = "vmaf-cli", {"vmaf_backend": vmaf_cli.backend}
        else:
            argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", *dis_input_args, *ref.input_args(),
                    "-lavfi", _libvmaf_filter(vmaf_pix_fmt(ref.pix_fmt), model=model, n_threads=n_threads),
                    "-f", "null", "-"]
            done = proc.run(argv, stage="score", timeout=timeout, cwd=wd, stdout=False)
            ms, stderr = done.ms, done.stderr
            backend, extra = "ffmpeg-libvmaf", {}
        try:
            text = log.read_text(encoding="utf-8")
        except OSError:
            raise ToolFailed("score", "libvmaf wrote no log", stderr[-STDERR_TAIL:]) from None
        try:
            frames, pooled, version = parse_vmaf_json(text, expected_frames=expected)
        except ToolFailed as exc:
            if ended := _ended_before(stderr):
                exc.reason = f"{exc.reason} (vmaf: {ended})"
                exc.args = (f"{exc.stage}: {exc.reason}",)
            exc.stderr_tail = stderr[-STDERR_TAIL:]
            raise
        if overfed:  # vmaf stopped reading a stream that still had frames: it is longer than the reference
            raise ToolFailed("score", f"the {' and '.join(overfed)} stream has more than the {expected} frames "
                             "of the reference", stderr[-STDERR_TAIL:])
    return ScoreResult(frames=frames, libvmaf_pooled=pooled, libvmaf_version=version, model=model,
                       score_time_ms=ms, backend=backend, extra=extra)


_FEEDS = {"ref": "reference", "dis": "distorted"}


def _ended_before(stderr: str) -> str | None:
    """vmaf's own line when one stream ended before the other ('"dis.yuv" ended before "ref.yuv".')."""
    m = re.search(r'^.*ended before.*$', stderr or "", re.M)
    return m.group(0).strip() if m else None


def _broken_pipe(exc: BaseException) -> bool:
    """A decoder that died writing into a FIFO nobody reads any more (ffmpeg: exit 224 = -EPIPE, or SIGPIPE)."""
    return isinstance(exc, ToolFailed) and exc.kind == "exit" and (
        exc.returncode in (224, -13) or "Broken pipe" in exc.stderr_tail)


def _release(fifos: dict[str, Path], feeders: list[threading.Thread], limit_s: float = 10.0) -> None:
    """vmaf is gone: end the feeders. One blocked opening its FIFO (vmaf never opened it, or not yet when
    it died) is let through by a reader that closes at once, so its next write fails with a broken pipe;
    repeated, because a feeder may reach its open() only after the first attempt."""
    deadline = time.monotonic() + limit_s
    while any(t.is_alive() for t in feeders) and time.monotonic() < deadline:
        for f in fifos.values():
            with contextlib.suppress(OSError):
                os.close(os.open(f, os.O_RDONLY | os.O_NONBLOCK))
        for t in feeders:
            t.join(timeout=0.05)


def _score_vmaf_cli(cli: VmafCli, ff: FFmpeg, ref: Source, dis_input_args: Sequence[str], *, n_threads: int,
                    model: str, timeout: float | None, wd: Path) -> tuple[float, str, list[str]]:
    """vmaf CLI scorer: two ffmpeg decoders write raw frames into FIFOs that vmaf reads.

    -> (vmaf's wall ms, its stderr, the streams vmaf stopped reading early). Raises in causal order
    (see the module doc)."""
    pix_fmt = vmaf_pix_fmt(ref.pix_fmt)
    layout, depth = vmaf_raw_layout(pix_fmt)
    fifos = {"ref": wd / "ref.yuv", "dis": wd / "dis.yuv"}
    for f in fifos.values():
        f.unlink(missing_ok=True)
        os.mkfifo(f)
    decode = {
        "ref": [str(ff.path), "-nostdin", "-v", "error", *ref.input_args(), "-map", "0:v:0"],
        "dis": [str(ff.path), "-nostdin", "-v", "error", *dis_input_args, "-map", "0:v:0"],
    }
    errors: dict[str, BaseException] = {}

    def feed(name: str) -> None:
        try:
            proc.run([*decode[name], "-fps_mode", "passthrough", "-pix_fmt", pix_fmt, "-f", "rawvideo", "-y",
                      str(fifos[name])], stage=f"decode {_FEEDS[name]}", timeout=timeout, stdout=False)
        except BaseException as exc:  # noqa: BLE001 - judged after vmaf returns
            errors[name] = exc
            if not _broken_pipe(exc):  # it died on its own, maybe before opening its FIFO: let vmaf see the end
                with contextlib.suppress(OSError):  # blocks until vmaf (or the unblocking below) opens the other end
                    os.close(os.open(fifos[name], os.O_WRONLY))

    feeders = [threading.Thread(target=feed, args=(n,), daemon=True) for n in fifos]
    for t in feeders:
        t.start()
    argv = [*cli.argv(), "--reference", fifos["ref"].name, "--distorted", fifos["dis"].name,
            "--width", str(ref.width), "--height", str(ref.height), "--pixel_format", layout, "--bitdepth", str(depth),
            "--model", f"version={model}", "--threads", str(n_threads), "--json", "--output", "vmaf.json", "--quiet"]
    try:
        done = proc.run(argv, stage="score", timeout=timeout, cwd=wd, env=cli.run_env(), stdout=False, check=False)
    finally:
        _release(fifos, feeders)
    causes = {name: exc for name, exc in errors.items() if not _broken_pipe(exc)}
    if causes:  # a decoder failed on its own: vmaf then only saw a short stream
        exc = next(iter(causes.values()))
        raise exc if isinstance(exc, ToolFailed) else ToolFailed("score", f"{type(exc).__name__}: {exc}")
    if not done.ok:
        raise ToolFailed("score", f"vmaf failed (exit code {done.returncode}): {proc.stderr_reason(done.stderr)}",
                         done.stderr[-STDERR_TAIL:], done.returncode)
    if cli.backend != "cpu" and (line := fallback_line(done.stderr)):
        raise BackendFallback("score", f"vmaf was run with its {cli.backend} backend ({' '.join(cli.run_flags)}) "
                              f"and fell back to the CPU: {line}", done.stderr[-STDERR_TAIL:], 0)
    return done.ms, done.stderr, [_FEEDS[name] for name in fifos if name in errors]


def score_files(ff: FFmpeg, ref_path: Path, dis_path: Path, *, n_threads: int = 1, model: str = DEFAULT_VMAF_MODEL,
                vmaf_cli: VmafCli | None = None, **geometry: object) -> tuple[Source, Source, ScoreResult]:
    """`ensemble-kit score REF DIS`: both files probed like references (raw geometry from name/sidecar/flags)."""
    ref = open_source(Path(ref_path), ff=ff, **geometry)  # type: ignore[arg-type]
    dis = open_source(Path(dis_path), ff=ff, **geometry)  # type: ignore[arg-type]
    if (dis.width, dis.height) != (ref.width, ref.height):
        raise BadInput(f"{dis.path.name} is {dis.width}x{dis.height} but {ref.path.name} is {ref.width}x{ref.height}",
                       hint="VMAF compares equal-size frames: scale the distorted clip to the reference size first")
    if dis.n_frames != ref.n_frames:
        raise BadInput(f"{dis.path.name} has {dis.n_frames} frames but {ref.path.name} has {ref.n_frames}",
                       hint="score clips with the same frames: trim one of them")
    check_vmaf_size(ref.path.name, ref.width, ref.height)
    try:
        return ref, dis, score(ff, ref, dis.input_args(), n_threads=n_threads, model=model, vmaf_cli=vmaf_cli)
    except ToolFailed as exc:
        raise WorkFailed(f"scoring {dis.path.name} against {ref.path.name} failed: {exc}") from None
