"""`ensemble-kit build-libvmaf`: build a libvmaf source tree with meson + ninja into binaries/<platform>/.

The built `vmaf` is only accepted after it really scores two frames; for the CUDA backend, after a run
that needs the GPU succeeds and the same run with no CUDA device fails — proof that the build uses
CUDA, which a help text that always mentions CUDA is not. `kit.corpus.ffmpeg.find_vmaf_cli()` then finds it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kit.core import proc
from kit.core.errors import BadInput, PrereqError, WorkFailed
from kit.core.fsio import write_text
from kit.env import platform

REPO_ROOT = Path(__file__).resolve().parents[2]
BACKENDS: dict[str, list[str]] = {  # backend -> libvmaf meson options
    "cpu": [],
    "cuda": ["-Denable_cuda=true"],
    "sycl": ["-Denable_sycl=true"],
}
COMMON_OPTIONS = ["--buildtype=release", "--default-library=static", "--libdir=lib",
                  "-Denable_tests=false", "-Denable_docs=false", "-Dbuilt_in_models=true"]
BUILD_TIMEOUT_S = 3600
RUN_TIMEOUT_S = 300
PROBE_W, PROBE_H, PROBE_FRAMES = 176, 144, 2


@dataclass(frozen=True)
class BuiltVmaf:
    path: Path  # the installed vmaf executable
    version: str
    backend: str
    evidence: str  # what the verification run showed


def find_meson_project(source: Path) -> Path:
    """The libvmaf meson project: DIR itself or DIR/libvmaf (the layout of the vmaf repository)."""
    if not source.is_dir():
        raise BadInput(f"--source: {source} is not a directory", hint="pass the vmaf or libvmaf source tree")
    for candidate in (source, source / "libvmaf"):
        if (candidate / "meson.build").is_file():
            return candidate
    raise BadInput(f"--source: no meson.build in {source} or {source / 'libvmaf'}",
                   hint="pass the root of a vmaf checkout (github.com/Netflix/vmaf) or its libvmaf/ folder")


def meson_command() -> list[str]:
    """meson on PATH, else the one installed in this interpreter (pip install meson)."""
    exe = shutil.which("meson")
    if exe:
        return [exe]
    try:
        import mesonbuild  # noqa: F401 - optional (pip install meson): only probed when meson is not on PATH
    except ImportError:
        raise PrereqError("meson is not installed", hint="pip install meson ninja (or pixi run -e test ...)") from None
    return [sys.executable, "-m", "mesonbuild.mesonmain"]


def ninja_env() -> dict[str, str]:
    """Environment in which meson finds ninja (PATH, else the pip `ninja` package's binary)."""
    env = dict(os.environ)
    if shutil.which("ninja") or shutil.which("samu"):
        return env
    try:
        import ninja  # optional (pip install ninja): only when ninja is not on PATH

        env["NINJA"] = str(Path(ninja.BIN_DIR) / "ninja")
        return env
    except (ImportError, AttributeError):
        raise PrereqError("ninja is not installed", hint="pip install ninja (or apt-get install ninja-build)") from None


def _run(argv: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
         what: str) -> None:
    try:
        done = proc.run(argv, stage=what, env=env, cwd=cwd, timeout=BUILD_TIMEOUT_S, check=False)
    except proc.ToolFailed as exc:
        if exc.kind == "timeout":
            raise WorkFailed(f"{what} took longer than {BUILD_TIMEOUT_S}s", hint=f"see {log}") from None
        raise WorkFailed(f"{what} failed: {exc.reason[:300]}", hint=f"full log: {log}") from None
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
    if not done.ok:
        raise WorkFailed(f"{what} failed: {proc.last_line(done.stderr.strip() or done.stdout)[:300]}",
                         hint=f"full log: {log}")


def build_libvmaf(source: Path, *, backend: str = "cpu", dest: Path | None = None,
                  meson_args: Sequence[str] = (), platform_tag: str | None = None) -> BuiltVmaf:
    """meson setup + compile + install into `dest` (binaries/<platform>/), then verify the vmaf it built."""
    if backend not in BACKENDS:
        raise BadInput(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}", hint="e.g. --backend cuda")
    project = find_meson_project(source)
    tag = platform_tag or platform.detect().tag
    dest = (dest or REPO_ROOT / "binaries" / tag).resolve()
    build_dir = dest / ".build" / f"libvmaf-{backend}"
    log = dest / ".build" / f"libvmaf-{backend}.log"
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    write_text(log, f"build-libvmaf {project} backend={backend}\n")
    meson, env = meson_command(), ninja_env()
    reconfigure = ["--reconfigure"] if (build_dir / "build.ninja").is_file() else []  # a rerun reuses the build
    setup = [*meson, "setup", *reconfigure, str(build_dir), str(project), f"--prefix={dest}",
             *COMMON_OPTIONS, *BACKENDS[backend], *meson_args]
    _run(setup, log=log, env=env, what="meson setup")
    _run([*meson, "compile", "-C", str(build_dir)], log=log, env=env, what="meson compile")
    _run([*meson, "install", "-C", str(build_dir)], log=log, env=env, what="meson install")
    vmaf = dest / "bin" / "vmaf"
    if not vmaf.is_file():
        raise WorkFailed(f"the build installed no {vmaf}", hint="is --source a libvmaf tree? (its tools/ builds vmaf)")
    return verify_vmaf(vmaf, backend)


def _write_probe_clips(tmp: Path) -> tuple[Path, Path]:
    """Two 8-bit 4:2:0 frames and a noisy copy: a real (tiny) scoring job."""
    rng = random.Random(0)
    frame = PROBE_W * PROBE_H * 3 // 2
    ref = bytes((x * 7 + y) % 256 for y in range(PROBE_FRAMES) for x in range(frame))
    dis = bytes(min(255, max(0, b + rng.randint(-6, 6))) for b in ref)
    (tmp / "ref.yuv").write_bytes(ref)
    (tmp / "dis.yuv").write_bytes(dis)
    return tmp / "ref.yuv", tmp / "dis.yuv"


def _score(vmaf: Path, tmp: Path, env: dict[str, str] | None = None) -> proc.Completed:
    """Score tmp/ref.yuv against tmp/dis.yuv into tmp/score.json."""
    ref, dis = tmp / "ref.yuv", tmp / "dis.yuv"
    out = tmp / "score.json"
    out.unlink(missing_ok=True)
    argv = [str(vmaf), "--reference", str(ref), "--distorted", str(dis), "--width", str(PROBE_W),
            "--height", str(PROBE_H), "--pixel_format", "420", "--bitdepth", "8",
            "--model", "version=vmaf_v0.6.1", "--json", "--output", str(out)]
    return proc.run(argv, stage="vmaf check", env=env, timeout=RUN_TIMEOUT_S, check=False)


def _frames(tmp: Path) -> list[dict]:
    try:
        return json.loads((tmp / "score.json").read_text())["frames"]
    except (OSError, ValueError, KeyError):
        return []


def verify_vmaf(vmaf: Path, backend: str = "cpu") -> BuiltVmaf:
    """Accept a vmaf binary only if it scores 2 real frames (and, for cuda, only with a CUDA device)."""
    try:
        version = proc.run([str(vmaf), "--version"], stage="vmaf --version", timeout=60, check=False).stdout.strip() \
            or "unknown"
    except proc.ToolFailed as exc:
        raise WorkFailed(f"the built {vmaf} does not run: {exc.reason}",
                         hint="see the build log in binaries/<platform>/.build/") from None
    with tempfile.TemporaryDirectory(prefix="ekit-vmafcheck-") as tmp_name:
        tmp = Path(tmp_name)
        _write_probe_clips(tmp)
        scored = _score(vmaf, tmp)
        frames = _frames(tmp)
        if not scored.ok or len(frames) != PROBE_FRAMES or any("vmaf" not in f["metrics"] for f in frames):
            reason = proc.last_line(scored.stderr, "no per-frame vmaf scores written")
            hint = "is an NVIDIA driver installed and a GPU visible (nvidia-smi)?" if backend == "cuda" else \
                "see the build log in binaries/<platform>/.build/"
            raise WorkFailed(f"the built vmaf ({backend}) failed a 2-frame score: {reason[:300]}", hint=hint)
        scores = ", ".join(f"{f['metrics']['vmaf']:.2f}" for f in frames)
        evidence = f"scored {PROBE_FRAMES} frames ({scores})"
        if backend == "cuda":
            no_gpu = _score(vmaf, tmp, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
            if no_gpu.ok and len(_frames(tmp)) == PROBE_FRAMES:
                raise WorkFailed("the vmaf built with -Denable_cuda=true scored just as well with no CUDA device "
                                 "visible: it does not use CUDA",
                                 hint="check that meson found the CUDA toolkit (nvcc) in the build log")
            evidence += "; the same run with CUDA_VISIBLE_DEVICES='' fails, so it runs on the GPU"
    return BuiltVmaf(vmaf, version, backend, evidence)
