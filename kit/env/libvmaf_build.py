"""`ensemble-kit build-libvmaf`: build a real libvmaf tree (the lusoris fork or Netflix's) into binaries/<platform>/.

1. Prerequisites first, all named at once with their install lines (`kit.env.libvmaf_prereqs`), and an
   ffmpeg with the libvmaf filter (the proof needs it).
2. Only the -D options the tree's meson_options.txt declares (meson rejects the others, and the fork
   declares options Netflix's tree lacks); the backend's own option must be declared.
3. The build directory sits directly inside the meson project (`libvmaf/build-ekit-<platform>-<backend>`):
   the CUDA kernels are compiled with include paths relative to it (`-I ../src`), so a build dir
   anywhere else fails with "cuda/integer_adm_cuda.h: No such file or directory".
4. After setup, `src/config.h` must define VMAF_BUILT_IN_MODELS 1 (without xxd it silently does not).
5. meson installs into `.build/prefix-<backend>`; the binary is staged as `bin/vmaf` (with its record,
   `bin/vmaf.json`) only after the proof below. A failed proof leaves the staged scorer as it was.
6. The proof: the kit's own CLI scoring path (FIFOs) on a generated pair must give every feature of
   every frame within 1e-4 of ffmpeg's libvmaf filter (the fork lacks Netflix's 2026 motion rewrite:
   motion2 and vmaf differ by up to ~3e-5; Netflix's HEAD matches exactly). For a GPU backend, the
   same with the backend's flags must run without the CLI's "using CPU" fallback line, and (CUDA) the
   control run with CUDA_VISIBLE_DEVICES='' must show that line: exit codes prove nothing, because the
   CLI falls back to the CPU with exit code 0.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kit.core import proc
from kit.core.errors import BadInput, PrereqError, WorkFailed
from kit.core.fsio import atomic_path, canonical_json, sha256_file, temp_dir, write_text
from kit.core.schema import LIBVMAF_KEYS
from kit.corpus import scoring, sources
from kit.corpus.ffmpeg import FFmpeg, find_ffmpeg
from kit.corpus.vmaf_cli import BackendFallback, VmafCli, load, run_flags_for, version_of, write_record
from kit.env import platform
from kit.env.libvmaf_prereqs import Project, meson_command, ninja_env, read_project, require

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Backend:
    options: tuple[str, ...]  # meson -D options (the first names the option the tree must declare)
    env: tuple[tuple[str, str], ...] = ()  # build environment, as libvmaf's README documents it
    hide_device: tuple[tuple[str, str], ...] = ()  # environment in which the backend cannot start (control run)
    device: str = ""  # what the backend needs at run time, in the user's words


BACKENDS: dict[str, Backend] = {
    "cpu": Backend(()),
    "cuda": Backend(("-Denable_cuda=true",), hide_device=(("CUDA_VISIBLE_DEVICES", ""),),
                    device="an NVIDIA GPU and its driver (nvidia-smi lists it; CUDA 13 builds need driver >= 580)"),
    # libvmaf/README.md: CC=icx CXX=icpx meson setup build -Denable_sycl=true -Db_lto=false
    "sycl": Backend(("-Denable_sycl=true", "-Db_lto=false"), env=(("CC", "icx"), ("CXX", "icpx")),
                    device="an Intel GPU and its Level Zero driver (sycl-ls lists it)"),
}
# what every build sets; each only when the tree declares it. enable_dnn=disabled: an ONNX Runtime that
# pkg-config happens to find must not end up linked into the scorer (fork only).
COMMON_OPTIONS = ("-Denable_tests=false", "-Denable_docs=false", "-Dbuilt_in_models=true", "-Denable_dnn=disabled")
BUILTIN_OPTIONS = ("--buildtype=release", "--default-library=static", "--libdir=lib")
PROOF_TOLERANCE = 1e-4  # per feature, per frame, against ffmpeg's libvmaf filter
PROOF_SIZE, PROOF_FRAMES, PROOF_FPS = (320, 240), 48, 25


@dataclass(frozen=True)
class BuiltVmaf:
    cli: VmafCli  # the staged binary
    record: Path
    build_s: float
    size_bytes: int
    evidence: str  # what the proof showed
    options: tuple[str, ...]  # the meson options used


def find_meson_project(source: Path) -> Path:
    """The libvmaf meson project: DIR itself or DIR/libvmaf (the layout of the vmaf repository)."""
    if not source.is_dir():
        raise BadInput(f"--source: {source} is not a directory", hint="pass the vmaf or libvmaf source tree")
    for candidate in (source / "libvmaf", source):
        if (candidate / "meson.build").is_file():
            return candidate
    raise BadInput(f"--source: no meson.build in {source} or {source / 'libvmaf'}",
                   hint="pass the root of a vmaf checkout (the lusoris fork or github.com/Netflix/vmaf) or its libvmaf/")


def meson_options(project: Project, backend: str, meson_args: Sequence[str]) -> list[str]:
    """The setup options: builtins, then the kit's and the backend's (only those the tree declares), then the user's."""
    wanted = BACKENDS[backend].options
    if wanted and wanted[0][2:].split("=")[0] not in project.options:
        raise BadInput(f"--backend {backend}: {project.root}/meson_options.txt declares no {wanted[0][2:].split('=')[0]}"
                       " option: this libvmaf tree has no such backend", hint="build --backend cpu, or use another tree")

    def declared(opt: str) -> bool:
        name = opt[2:].split("=")[0]
        return name in project.options or name.startswith("b_")

    return [*BUILTIN_OPTIONS, *(o for o in (*COMMON_OPTIONS, *wanted) if declared(o)), *meson_args]


def _run(argv: list[str], *, log: Path, env: dict[str, str], what: str) -> float:
    """Run one build step, append its output to the log; -> seconds."""
    try:
        done = proc.run(argv, stage=what, env=env, timeout=BUILD_TIMEOUT_S, check=False)
    except proc.ToolFailed as exc:
        if exc.kind == "timeout":
            raise WorkFailed(f"{what} took longer than {BUILD_TIMEOUT_S}s", hint=f"see {log}") from None
        raise WorkFailed(f"{what} failed: {exc.reason[:300]}", hint=f"full log: {log}") from None
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
    if not done.ok:
        output = done.stdout + done.stderr
        line = next((ln for ln in output.splitlines() if "ERROR" in ln or "error:" in ln), proc.last_line(output))
        raise WorkFailed(f"{what} failed: {line.strip()[:300]}", hint=f"full log: {log}")
    return done.ms / 1000


def _source_commit(source: Path) -> dict[str, Any]:
    """The git commit of the tree (and whether tracked files were changed), when it is a checkout."""
    git = shutil.which("git")
    if git is None:
        return {"commit": None, "dirty": None}
    head = proc.run([git, "-C", str(source), "rev-parse", "HEAD"], stage="git", timeout=60, check=False)
    if not head.ok:
        return {"commit": None, "dirty": None}
    status = proc.run([git, "-C", str(source), "status", "--porcelain", "--untracked-files=no"], stage="git",
                      timeout=60, check=False)
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.ok else None}


def compile_tree(source: Path, backend: str, dest: Path, meson_args: Sequence[str], tag: str,
                 log: Path) -> tuple[Path, float, list[str]]:
    """meson setup + compile + install into dest/.build/prefix-<backend>; -> (its vmaf, seconds, options)."""
    project = read_project(find_meson_project(source))
    options = meson_options(project, backend, meson_args)
    require(project, backend, options)
    build_dir = project.root / f"build-ekit-{tag}-{backend}"
    prefix = dest / ".build" / f"prefix-{backend}"
    if not os.access(project.root, os.W_OK):
        raise BadInput(f"--source: {project.root} is not writable, and the build directory must sit inside it "
                       "(libvmaf's CUDA kernels include ../src)", hint="build a writable copy of the tree")
    env = {**ninja_env(), **dict(BACKENDS[backend].env)}
    meson = meson_command()
    # a rerun reuses the build; with other options it starts afresh (meson would keep options set earlier)
    used = build_dir / "ekit-options.json"
    again = (["--reconfigure"] if _text(used) == canonical_json(options) else ["--wipe"]) \
        if (build_dir / "build.ninja").is_file() else []
    seconds = _run([*meson, "setup", *again, str(build_dir), str(project.root), f"--prefix={prefix}", *options],
                   log=log, env=env, what="meson setup")
    write_text(used, canonical_json(options))
    config = build_dir / "src" / "config.h"
    if "built_in_models" in project.options and "#define VMAF_BUILT_IN_MODELS 1" not in _text(config):
        raise WorkFailed(f"meson configured {build_dir} without built-in models ({config} does not define "
                         "VMAF_BUILT_IN_MODELS 1)", hint="install xxd and keep -Dbuilt_in_models=true; full log: "
                         f"{log}")
    seconds += _run([*meson, "compile", "-C", str(build_dir)], log=log, env=env, what="meson compile")
    seconds += _run([*meson, "install", "-C", str(build_dir)], log=log, env=env, what="meson install")
    vmaf = prefix / "bin" / "vmaf"
    if not vmaf.is_file():
        raise WorkFailed(f"the build installed no {vmaf}", hint="is --source a libvmaf tree with tools/? "
                         "(-Denable_tools=false turns the CLI off)")
    return vmaf, seconds, options


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


# ---- the proof -----------------------------------------------------------------------------------


def _proof_pair(ff: FFmpeg, tmp: Path) -> tuple[sources.Source, list[str]]:
    """A generated reference (testsrc2) and a blurred, noisy copy of it, as a Source and ffmpeg input args."""
    w, h = PROOF_SIZE
    ref, dis = tmp / "proof_ref.y4m", tmp / "proof_dis.y4m"
    head = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error"]
    proc.run([*head, "-f", "lavfi", "-i", f"testsrc2=s={w}x{h}:r={PROOF_FPS}", "-frames:v", str(PROOF_FRAMES),
              "-pix_fmt", "yuv420p", "-f", "yuv4mpegpipe", "-y", str(ref)], stage="proof clip", stdout=False)
    proc.run([*head, "-i", str(ref), "-vf", "gblur=sigma=1.2,noise=alls=14:allf=t:all_seed=7", "-pix_fmt", "yuv420p",
              "-f", "yuv4mpegpipe", "-y", str(dis)], stage="proof clip", stdout=False)
    return sources.open_source(ref, ff=ff), ["-i", str(dis)]


def _deltas(a: scoring.ScoreResult, b: scoring.ScoreResult) -> dict[str, float]:
    return {k: max(abs(x[k] - y[k]) for x, y in zip(a.frames, b.frames, strict=True)) for k in LIBVMAF_KEYS}


def _format_deltas(deltas: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1e}" for k, v in deltas.items())


def _agree(cli: VmafCli, ff: FFmpeg, ref: sources.Source, dis_args: list[str],
           reference: scoring.ScoreResult, what: str) -> dict[str, float]:
    """Score the pair with `cli`; every feature of every frame within PROOF_TOLERANCE of the filter's."""
    try:
        result = scoring.score(ff, ref, dis_args, n_threads=2, vmaf_cli=cli)
    except BackendFallback:
        raise
    except proc.ToolFailed as exc:
        raise WorkFailed(f"the built vmaf ({what}) failed to score the proof pair: {exc.reason[:300]}",
                         hint="see the build log in binaries/<platform>/.build/") from None
    deltas = _deltas(result, reference)
    worst = max(deltas, key=lambda k: deltas[k])
    if not deltas[worst] <= PROOF_TOLERANCE or any(math.isnan(v) for v in deltas.values()):
        raise WorkFailed(f"the built vmaf ({what}) disagrees with ffmpeg's libvmaf filter: {worst} differs by "
                         f"{deltas[worst]:.2e} (> {PROOF_TOLERANCE:g}); max |delta| per feature: {_format_deltas(deltas)}",
                         hint="is --source a libvmaf tree (lusoris fork or Netflix) at a sane commit? not staged")
    return deltas


def prove(cli: VmafCli, backend: str, ff: FFmpeg) -> tuple[str, dict[str, Any]]:
    """Score a generated pair with the CLI's CPU path and then its backend; -> (evidence, proof record)."""
    with temp_dir("vmafproof") as tmp_name:
        ref, dis_args = _proof_pair(ff, Path(tmp_name))
        reference = scoring.score(ff, ref, dis_args, n_threads=2)
        cpu = dataclasses.replace(cli, backend="cpu", run_flags=())
        deltas = {"cpu": _agree(cpu, ff, ref, dis_args, reference, "cpu")}
        evidence = [f"{PROOF_FRAMES} frames {PROOF_SIZE[0]}x{PROOF_SIZE[1]} agree with ffmpeg's libvmaf filter "
                    f"within {PROOF_TOLERANCE:g} (max |delta|: {_format_deltas(deltas['cpu'])})"]
        if backend != "cpu":
            try:
                deltas[backend] = _agree(cli, ff, ref, dis_args, reference, backend)
            except BackendFallback as exc:
                raise PrereqError(f"built {cli.path} with {backend}, but its {backend} backend cannot run on this box "
                                  f"(`vmaf {' '.join(cli.run_flags)}` said: {exc.reason.rsplit(': ', 1)[-1]}); "
                                  "not staged", hint=f"it needs {BACKENDS[backend].device}; on such a box the same "
                                  "command reuses this build") from None
            evidence.append(f"{backend}: `vmaf {' '.join(cli.run_flags)}` ran without falling back to the CPU and "
                            f"agrees (max |delta|: {_format_deltas(deltas[backend])})")
            if hide := BACKENDS[backend].hide_device:
                control = dataclasses.replace(cli, env=hide)
                try:
                    scoring.score(ff, ref, dis_args, n_threads=2, vmaf_cli=control)
                except BackendFallback:
                    evidence.append(f"with {' '.join(f'{k}={v!r}' for k, v in hide)} it falls back to the CPU, "
                                    f"so the flag reaches {backend}")
                else:
                    raise WorkFailed(f"the vmaf built with {backend} scored with {' '.join(f'{k}={v!r}' for k, v in hide)} "
                                     f"and printed no fallback line: it never starts {backend}",
                                     hint="check the build log: did meson find the toolkit? not staged")
    record = {"tolerance": PROOF_TOLERANCE, "frames": PROOF_FRAMES, "size": f"{PROOF_SIZE[0]}x{PROOF_SIZE[1]}",
              "max_abs_delta": deltas, "ffmpeg": {"version": ff.version, "libvmaf_version": ff.libvmaf_version}}
    return "; ".join(evidence), record


# ---- the command ---------------------------------------------------------------------------------


def _stage(built: Path, dest: Path) -> Path:
    """Copy the proven binary to dest/bin/vmaf atomically (a running scorer keeps its old inode)."""
    target = dest / "bin" / "vmaf"
    with atomic_path(target) as tmp:
        shutil.copyfile(built, tmp)
        os.chmod(tmp, 0o755)
    return target


def build_libvmaf(source: Path, *, backend: str = "cpu", dest: Path | None = None,
                  meson_args: Sequence[str] = (), platform_tag: str | None = None,
                  ffmpeg: FFmpeg | None = None) -> BuiltVmaf:
    """Build, prove and stage `vmaf` into `dest` (default binaries/<platform>/) with its record."""
    if backend not in BACKENDS:
        raise BadInput(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}", hint="e.g. --backend cuda")
    source = Path(source).resolve()
    find_meson_project(source)  # bad --source before any probing
    ff = ffmpeg or find_ffmpeg()  # the proof needs the libvmaf filter: say so before building
    tag = platform_tag or platform.detect().tag
    dest = Path(dest or REPO_ROOT / "binaries" / tag).resolve()
    log = dest / ".build" / f"libvmaf-{backend}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    write_text(log, f"build-libvmaf {source} backend={backend}\n")
    built, seconds, options = compile_tree(source, backend, dest, meson_args, tag, log)
    cli = VmafCli(path=built, version=version_of(built), sha256="", backend=backend,
                  run_flags=run_flags_for(built, backend))
    evidence, proof = prove(cli, backend, ff)
    staged = _stage(built, dest)
    size = staged.stat().st_size
    record = write_record(dataclasses.replace(cli, path=staged, sha256=sha256_file(staged)),
                          source={"path": str(source), **_source_commit(source)}, meson_options=options,
                          built_utc=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                          build_seconds=round(seconds, 1), size_bytes=size, proof=proof)
    return BuiltVmaf(load(staged), record, seconds, size, evidence, tuple(options))
