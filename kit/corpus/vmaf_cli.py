"""The standalone libvmaf `vmaf` CLI as a scorer: where it is, what it is, how to run it, and when to use it.

`binaries/<platform>/bin/vmaf` (or $ENSEMBLE_KIT_VMAF) is found here. `ensemble-kit build-libvmaf`
writes a record beside it (`vmaf.json`: sha256, version, backend, source commit, the flags that select
its backend), trusted only while the binary's sha256 still matches it.

Facts about the real CLI this module is built on (the lusoris fork and Netflix's, checked on both):
`vmaf --version` prints to stderr; a GPU backend is opt-in on the fork (`--backend cuda`; Netflix's
CLI uses CUDA unless `--gpumask` masks it) and, when it cannot start, the CLI prints "problem during
vmaf_cuda_state_init, using CPU" and goes on with exit code 0. Such a run is a failure here
(`BackendFallback`), never CPU numbers under a GPU label. Option support cannot be probed by exit
code (unknown options only warn), so it is read from the usage text.

Which scorer a run uses (`choose_scorer`): ffmpeg's libvmaf filter unless the user asks for the CLI
(`--scorer vmaf`) or a staged CLI brings a GPU backend the filter lacks (`--scorer auto`, the default).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.core import proc
from kit.core.console import warn
from kit.core.errors import BadInput, PrereqError
from kit.core.fsio import read_json, sha256_file, write_json
from kit.corpus.ffmpeg import platform_bin

RECORD_SCHEMA = "ensemble-kit/vmaf-build"
RECORD_SCHEMA_VERSION = 1
SCORERS: tuple[str, ...] = ("auto", "ffmpeg", "vmaf")
BACKENDS: tuple[str, ...] = ("cpu", "cuda", "sycl")
GPU_BACKENDS: tuple[str, ...] = ("cuda", "sycl")  # what ffmpeg's libvmaf filter cannot do
# backend -> (flags when the CLI has `--backend` (the fork), flags otherwise (Netflix's CLI)).
# No flag means CPU on the fork; `--gpumask 0` masks no GPU on Netflix's and engages CUDA on the fork.
BACKEND_FLAGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cpu": ((), ()),
    "cuda": (("--backend", "cuda"), ("--gpumask", "0")),
    "sycl": (("--backend", "sycl"), ("--sycl_device", "0")),
}
# what the CLI prints when a GPU backend did not start and it scored on the CPU instead (exit code 0)
FALLBACK_RE = re.compile(r"problem during vmaf_\w+_state_init[^\n]*|Cannot load libcuda[^\n]*")
VERSION_TIMEOUT_S = 30


class BackendFallback(proc.ToolFailed):
    """The CLI was asked for a GPU backend and scored on the CPU instead (it still exits 0)."""


@dataclass(frozen=True)
class VmafCli:
    path: Path
    version: str  # `vmaf --version` (stderr): the fork prints its commit, Netflix's its release
    sha256: str
    backend: str = "cpu"  # what it is run with: cpu | cuda | sycl
    run_flags: tuple[str, ...] = ()  # the flags that select `backend`
    source_commit: str | None = None  # the libvmaf tree it was built from (when built by the kit)
    recorded: bool = False  # a build record vouches for backend/source_commit
    env: tuple[tuple[str, str], ...] = ()  # extra environment for its runs (the no-device control run)

    def argv(self) -> list[str]:
        return [str(self.path), *self.run_flags]

    def run_env(self) -> dict[str, str] | None:
        return {**os.environ, **dict(self.env)} if self.env else None

    def identity(self) -> dict[str, Any]:
        """What decides its numbers (part of every cell id). The sha256 is left out: a build of the
        same tree on another box gives the same numbers and another hash."""
        return {"backend": "vmaf-cli", "version": self.version, "vmaf_backend": self.backend,
                "source_commit": self.source_commit}

    def fingerprint(self) -> dict[str, Any]:
        """Its identity plus the binary's sha256, for the environment fingerprint."""
        return {**self.identity(), "sha256": self.sha256}

    def describe(self) -> str:
        return f"vmaf CLI {self.version} ({self.backend}) at {self.path}"


def filter_identity(libvmaf_version: str | None) -> dict[str, Any]:
    """The ffmpeg libvmaf filter as a scorer (the same dict cell ids have always carried)."""
    return {"backend": "ffmpeg-libvmaf", "libvmaf_version": libvmaf_version}


def record_path(vmaf: Path) -> Path:
    """binaries/<platform>/bin/vmaf -> binaries/<platform>/bin/vmaf.json."""
    return vmaf.with_name(f"{vmaf.name}.json")


def _run(vmaf: Path, args: list[str]) -> proc.Completed:
    try:
        return proc.run([str(vmaf), *args], stage="vmaf", timeout=VERSION_TIMEOUT_S, check=False)
    except proc.ToolFailed as exc:
        raise PrereqError(f"the vmaf CLI at {vmaf} does not run: {exc.reason}",
                          hint="rebuild it with `ensemble-kit build-libvmaf`, or point ENSEMBLE_KIT_VMAF elsewhere") from None


def version_of(vmaf: Path) -> str:
    """`vmaf --version`: the real CLI prints it to stderr (some builds to stdout); its last line."""
    done = _run(vmaf, ["--version"])
    return proc.last_line(done.stderr.strip() or done.stdout, "unknown") if done.ok else "unknown"


def run_flags_for(vmaf: Path, backend: str) -> tuple[str, ...]:
    """The flags that select `backend`, by what the CLI's usage text offers (`--backend` on the fork)."""
    with_selector, without = BACKEND_FLAGS[backend]
    if not with_selector:
        return ()
    done = _run(vmaf, [])  # no arguments: the usage text, on stderr
    return with_selector if "--backend" in done.stderr + done.stdout else without


def fallback_line(stderr: str) -> str | None:
    """The CLI's own words when a GPU backend did not start (None when it did, or none was asked for)."""
    found = FALLBACK_RE.findall(stderr or "")
    return found[-1].strip() if found else None


def _record(vmaf: Path, sha256: str) -> dict[str, Any] | None:
    """The build record beside `vmaf`, or None when absent, unreadable or describing another binary."""
    path = record_path(vmaf)
    if not path.is_file():
        return None
    try:
        rec = read_json(path, what="vmaf build record")
    except BadInput as exc:
        warn(f"ignoring {path}: {exc}")
        return None
    fields_ok = (isinstance(rec, dict) and rec.get("schema") == RECORD_SCHEMA and rec.get("backend") in BACKENDS
                 and isinstance(rec.get("version"), str) and isinstance(rec.get("run_flags"), list)
                 and all(isinstance(f, str) for f in rec["run_flags"]))
    if not fields_ok:
        warn(f"ignoring {path}: not an ensemble-kit vmaf build record")
        return None
    if rec.get("sha256") != sha256:
        warn(f"ignoring {path}: it describes another binary than {vmaf} (rebuilt or replaced since); "
             "treating it as an unrecorded CPU build")
        return None
    return rec


def load(vmaf: Path) -> VmafCli:
    """The CLI at `vmaf` as a scorer: from its build record when one matches, else probed (CPU backend)."""
    vmaf = Path(vmaf).resolve()
    digest = sha256_file(vmaf)
    rec = _record(vmaf, digest)
    if rec is None:
        return VmafCli(path=vmaf, version=version_of(vmaf), sha256=digest)
    source = rec.get("source") if isinstance(rec.get("source"), dict) else {}
    commit = source.get("commit") if isinstance(source.get("commit"), str) else None
    return VmafCli(path=vmaf, version=rec["version"], sha256=digest, backend=rec["backend"],
                   run_flags=tuple(rec["run_flags"]), source_commit=commit, recorded=True)


def write_record(cli: VmafCli, **details: Any) -> Path:
    """Write the build record beside the binary (atomically); `details` says how it was built and proved."""
    path = record_path(cli.path)
    write_json(path, {"schema": RECORD_SCHEMA, "schema_version": RECORD_SCHEMA_VERSION, "sha256": cli.sha256,
                      "version": cli.version, "backend": cli.backend, "run_flags": list(cli.run_flags), **details})
    return path


def find_vmaf_cli() -> VmafCli | None:
    """$ENSEMBLE_KIT_VMAF (which must then be a working binary), else binaries/<platform>/bin/vmaf."""
    if env := os.environ.get("ENSEMBLE_KIT_VMAF"):
        path = Path(env)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise PrereqError(f"ENSEMBLE_KIT_VMAF={env} is not an executable file",
                              hint="point it at a built vmaf (e.g. binaries/<platform>/bin/vmaf) or unset it")
        return load(path)
    staged = platform_bin("vmaf")
    if staged.is_file() and os.access(staged, os.X_OK):
        return load(staged)
    return None


def choose_scorer(requested: str) -> VmafCli | None:
    """--scorer: None for ffmpeg's libvmaf filter, or the vmaf CLI to score with.

    `auto` takes a staged CLI only when its record says it runs a GPU backend (which the filter cannot);
    on a CPU it costs the same as the filter and differs from it slightly (see docs/environments.md).
    """
    if requested not in SCORERS:
        raise BadInput(f"--scorer {requested!r} is not one of {', '.join(SCORERS)}", hint="e.g. --scorer vmaf")
    if requested == "ffmpeg":
        return None
    cli = find_vmaf_cli()
    if requested == "vmaf":
        if cli is None:
            raise PrereqError("--scorer vmaf: no vmaf CLI in binaries/<platform>/bin/ and ENSEMBLE_KIT_VMAF is unset",
                              hint="build one with `ensemble-kit build-libvmaf --source <vmaf checkout>`, "
                                   "or use --scorer ffmpeg")
        return cli
    return cli if cli is not None and cli.recorded and cli.backend in GPU_BACKENDS else None


def scorer_identity(cli: VmafCli | None, libvmaf_version: str | None) -> dict[str, Any]:
    """The scorer a run uses, for cell ids, grid.json and run.json."""
    return cli.identity() if cli is not None else filter_identity(libvmaf_version)


def scorer_fingerprint(cli: VmafCli | None, libvmaf_version: str | None) -> dict[str, Any]:
    """The scorer a run uses, for the environment fingerprint (with the CLI binary's sha256)."""
    return cli.fingerprint() if cli is not None else filter_identity(libvmaf_version)
