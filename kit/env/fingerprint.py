"""The environment fingerprint, in two parts.

`result_env` is everything that can change a number (or a byte) the kit writes: the content digest of
each distribution that computes or serialises results (`RESULT_DISTRIBUTIONS`, plus the BLAS/OpenMP/
arrow conda packages in a pixi environment), the sha256 of the ffmpeg binary (its built-in libvmaf
models included), the libvmaf version and model, the scorer (the filter, or a vmaf CLI: its version,
backend, source commit and sha256), torch's build, the BLAS numpy and scipy use, the
Python minor version, the kit's version, commit and source digest, the gate thresholds' defaults and the
environment variables that change numerics. Its id (`fingerprint_id`) is what corpus rows, verdicts,
sidecars and bundles carry, and the only thing `compare` and the pipeline's resume check compare: two
honest boxes installed from the same lock share it. It is an allowlist, so installing pytest beside the
kit does not move it; replacing the ffmpeg binary does.

`host` is what describes the machine: CPU (model, ISA), OS, GPUs and driver, full Python version, the
lock file and installer, and, inside the kit's image, its flavour and inputs digest (set in the image)
and its digest ($ENSEMBLE_KIT_IMAGE_DIGEST, set by the launcher: an image cannot contain its own digest).
It is recorded beside `result_env` in every artefact and never compared. Nothing in either part varies
between runs on one box (no free memory, time, hostname or checkout path).

A distribution's digest is the sha256 of its RECORD rows (path and file hash) without the files an
installer writes for itself (INSTALLER, REQUESTED, direct_url.json, RECORD, scripts with the venv's
shebang, byte code): pip and uv installs of the same wheel give the same digest.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import platform as _stdlib_platform
import re
import shutil
import sys
from collections.abc import Callable
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import kit
from kit import __version__
from kit.core import proc
from kit.core.console import warn
from kit.core.errors import KitError, PrereqError
from kit.core.fsio import canonical_json, sha256_file
from kit.core.ids import FINGERPRINT_ID_LEN, object_id, sha256_hex, shorten
from kit.core.schema import DEFAULT_VMAF_MODEL
from kit.corpus import ffmpeg as ffmpeg_tools
from kit.corpus import vmaf_cli
from kit.env import lockfiles, locks, platform
from kit.results.thresholds import GATE_DEFAULTS  # a leaf data module (no kit imports): the gate's defaults

FINGERPRINT_VERSION = 2
# Distributions whose bytes can change a result (distribution name -> import name, for prereqs): the
# training and its BLAS, the statistics, the corpus and model files (parquet, ONNX protobuf), the
# report's plots, and the ffmpeg wheel.
RESULT_DISTRIBUTIONS: dict[str, str] = {
    "torch": "torch", "numpy": "numpy", "scipy": "scipy", "pandas": "pandas", "pyarrow": "pyarrow",
    "onnx": "onnx", "onnxruntime": "onnxruntime", "protobuf": "google.protobuf", "matplotlib": "matplotlib",
    "imageio-ffmpeg": "imageio_ffmpeg",
}
# In a conda/pixi environment the native libraries are packages of their own.
CONDA_RESULT_PACKAGES = ("libblas", "libcblas", "liblapack", "libopenblas", "mkl", "llvm-openmp", "libgomp",
                         "_openmp_mutex", "libtorch", "libarrow", "libparquet", "libprotobuf", "onnxruntime",
                         "ffmpeg")
# Environment variables that change numerics when set (instruction sets, MKL reproducibility mode).
NUMERIC_ENV_VARS = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                    "DNNL_MAX_CPU_ISA", "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES")
IMAGE_DIGEST_ENV = "ENSEMBLE_KIT_IMAGE_DIGEST"  # set by the launcher (podman -e, the k8s Job, Slurm's apptainer)
IMAGE_ENV_ENV, IMAGE_INPUTS_ENV = "ENSEMBLE_KIT_IMAGE_ENV", "ENSEMBLE_KIT_IMAGE_INPUTS"  # set in the image itself
# Files of a dist-info directory an installer writes for itself, not part of the wheel.
INSTALLER_FILES = frozenset({"INSTALLER", "REQUESTED", "direct_url.json", "RECORD", "uv_cache.json"})
KIT_DIR = Path(kit.__file__).resolve().parent
BUILD_INFO = KIT_DIR / "_build.json"  # commit of a wheel or dist tarball, written when it is built
# The kit's own files that make up its behaviour (code and the lock data it checks against).
KIT_SOURCE_SUFFIXES = (".py", ".json", ".txt", ".toml")


# ---- distributions ---------------------------------------------------------------------------


def record_digest(dist: metadata.Distribution) -> str | None:
    """sha256 over the wheel's own RECORD rows (see module doc); None without a RECORD."""
    text = dist.read_text("RECORD")
    if not text:
        return None
    rows = []
    for row in csv.reader(text.splitlines()):
        if not row:
            continue
        path = row[0]
        name = path.rsplit("/", 1)[-1]
        in_dist_info = ".dist-info/" in path and path.count("/") == 1
        if path.startswith(("../", "/")) or "__pycache__" in path or path.endswith(".pyc") or \
                (in_dist_info and name in INSTALLER_FILES):
            continue
        rows.append(f"{path},{row[1] if len(row) > 1 else ''}")
    return sha256_hex("\n".join(sorted(rows)))


@cache
def _conda_records(prefix: str) -> dict[str, dict[str, Any]]:
    """name -> conda-meta record of a conda prefix (empty when it is not one)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(prefix, "conda-meta").glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            found[str(rec["name"])] = rec
        except (OSError, ValueError, KeyError):
            continue
    return found


def conda_packages(prefix: str | None = None) -> dict[str, dict[str, str]]:
    """The number-affecting conda packages of this environment (pixi/conda), name -> version, build, sha256."""
    prefix = prefix if prefix is not None else os.environ.get("CONDA_PREFIX")
    if not prefix:
        return {}
    records = _conda_records(prefix)
    return {name: {"version": str(records[name].get("version")), "build": str(records[name].get("build")),
                   "sha256": str(records[name].get("sha256"))}
            for name in CONDA_RESULT_PACKAGES if name in records}


@cache
def _distribution(name: str, paths: tuple[str, ...] | None) -> dict[str, str | None] | None:
    try:
        dist = next(iter(metadata.distributions(name=name, path=list(paths)))) if paths is not None \
            else metadata.distribution(name)
    except (metadata.PackageNotFoundError, StopIteration):
        return None
    return {"version": dist.version, "digest": record_digest(dist)}


def result_packages(paths: tuple[str, ...] | None = None) -> dict[str, dict[str, str | None] | None]:
    """name -> {version, digest} for every RESULT_DISTRIBUTIONS entry (None when not installed)."""
    return {name: _distribution(name, paths) for name in RESULT_DISTRIBUTIONS}


def _torch_build() -> dict[str, Any] | None:
    """torch's build (version.py: CUDA/HIP/XPU, git revision) read from its files, without importing torch."""
    try:
        dist = metadata.distribution("torch")
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file("torch/version.py")))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    fields = dict(re.findall(r"^(\w+)(?:: \S+)? = (.+)$", text, re.M))
    keep = ("__version__", "git_version", "cuda", "hip", "xpu", "debug")
    return {k.strip("_"): _literal(fields[k]) for k in keep if k in fields}


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def _blas(module: str) -> dict[str, Any] | None:
    """The BLAS/LAPACK numpy or scipy was built with (name, version), from its show_config."""
    try:
        mod = __import__(module)
        config = mod.show_config(mode="dicts")
    except Exception:  # noqa: BLE001 - missing, or an old show_config without mode: record nothing
        return None
    deps = (config or {}).get("Build Dependencies", {})
    return {k: {"name": deps[k].get("name"), "version": deps[k].get("version")} for k in ("blas", "lapack") if k in deps}


# ---- the kit itself --------------------------------------------------------------------------


@cache
def kit_source_sha256() -> str:
    """sha256 over the kit's own files (relative path + content): the same for a checkout and a wheel."""
    rows = []
    for path in sorted(KIT_DIR.rglob("*")):
        rel = path.relative_to(KIT_DIR).as_posix()
        if path.is_file() and path.suffix in KIT_SOURCE_SUFFIXES and "__pycache__" not in rel and path != BUILD_INFO:
            rows.append(f"{rel},{sha256_file(path)}")
    return sha256_hex("\n".join(rows))


def _git(where: Path, *args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = proc.run([git, "-C", str(where), *args], stage="git", timeout=20, check=False)
    except proc.ToolFailed:
        return None
    return done.stdout.strip() if done.ok else None


@cache
def kit_commit() -> dict[str, Any]:
    """{commit, dirty} of the kit: from git when kit/ is the checkout's own kit/, else from the
    `kit/_build.json` a wheel or dist tarball was built with, else unknown (None)."""
    top = _git(KIT_DIR, "rev-parse", "--show-toplevel")
    if top and Path(top).resolve() / "kit" == KIT_DIR:
        info = build_info(Path(top))
        if info["commit"]:
            return info
    try:
        info = json.loads(BUILD_INFO.read_text(encoding="utf-8"))
        return {"commit": info.get("commit"), "dirty": info.get("dirty")}
    except (OSError, ValueError, AttributeError):
        return {"commit": None, "dirty": None}


def build_info(source: Path) -> dict[str, Any]:
    """What `kit/_build.json` records for a checkout at `source` (the wheel build and `dist` write it)."""
    commit = _git(source, "rev-parse", "HEAD")
    dirty = _git(source, "status", "--porcelain", "--", "kit") if commit else None
    return {"commit": commit, "dirty": bool(dirty) if commit else None}


# ---- the two parts ---------------------------------------------------------------------------


def _ffmpeg_result(ff: Any | None) -> dict[str, Any] | None:
    if ff is None:
        return None
    return {"sha256": lockfiles.binary_sha256(ff.path), "version": ff.version,
            "configure_sha256": ff.configure_sha256}


def _default_ffmpeg() -> Any | None:
    try:
        return ffmpeg_tools.find_ffmpeg(require_libvmaf=False)
    except KitError:
        return None


def make_result_env(ff: Any | None, *, vmaf_model: str = DEFAULT_VMAF_MODEL,
                    packages: dict[str, Any] | None = None, conda: dict[str, Any] | None = None,
                    kit_info: dict[str, Any] | None = None, scorer: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that can change a number (module doc). Each argument is injectable for tests.

    `scorer` is what computes the features (`kit.corpus.vmaf_cli.scorer_fingerprint`: a vmaf CLI's
    version, backend, source commit and sha256); None: this ffmpeg's libvmaf filter."""
    libvmaf_version = ff.libvmaf_version if ff is not None else None
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "platform": lockfiles.conda_platform(),
        "python": ".".join(_stdlib_platform.python_version_tuple()[:2]),
        "packages": packages if packages is not None else result_packages(),
        "conda": conda if conda is not None else conda_packages(),
        "torch_build": _torch_build(),
        "blas": {"numpy": _blas("numpy"), "scipy": _blas("scipy")},
        "ffmpeg": _ffmpeg_result(ff),
        # the vmaf_v0.6.1 models are built into the ffmpeg binary: its sha256 above is their hash
        "libvmaf": {"version": libvmaf_version, "model": vmaf_model,
                    "model_source": "built into the ffmpeg binary (ffmpeg.sha256)"},
        "scorer": scorer if scorer is not None else vmaf_cli.filter_identity(libvmaf_version),
        "kit": kit_info if kit_info is not None else {"version": __version__, **kit_commit(),
                                                        "source_sha256": kit_source_sha256()},
        "gate_defaults": dict(GATE_DEFAULTS),
        "numeric_env": {k: os.environ[k] for k in NUMERIC_ENV_VARS if k in os.environ},
    }


@cache
def os_name() -> str:
    """'Debian GNU/Linux 12 (bookworm)' / 'macOS 14.5': the distribution, not the hostname or kernel build."""
    if sys.platform == "darwin":
        return f"macOS {_stdlib_platform.mac_ver()[0] or 'unknown'}"
    try:
        release = _stdlib_platform.freedesktop_os_release()
        return release.get("PRETTY_NAME") or release.get("NAME", "Linux")
    except OSError:
        return _stdlib_platform.system() or "unknown"


@cache
def cpu_isa() -> str | None:
    """The widest x86 vector ISA this CPU has (what torch's CPU kernels dispatch to), or the arch."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return _stdlib_platform.machine() or None
    for isa, flag in (("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return isa
    return _stdlib_platform.machine() or None


def _installer() -> str | None:
    if os.environ.get("PIXI_ENVIRONMENT_NAME"):
        return "pixi"
    try:
        return (metadata.distribution("ensemble-kit").read_text("INSTALLER") or "").strip() or None
    except metadata.PackageNotFoundError:
        return None


def make_host(host: Any | None = None, *, lock: dict[str, Any] | None = None, ff: Any | None = None) -> dict[str, Any]:
    """What describes this machine: recorded, never compared (module doc)."""
    host = host or platform.detect()
    return {
        "platform": host.tag,
        "os": os_name(),
        "arch": host.arch,
        "cpu_model": platform.cpu_model(),
        "cpu_isa": cpu_isa(),
        "gpus": sorted((g.identity() for g in host.gpus), key=canonical_json),
        "python": _stdlib_platform.python_version(),
        "lock": lock if lock is not None else locks.current_lock().identity(),
        "installer": _installer(),
        "pixi_environment": os.environ.get("PIXI_ENVIRONMENT_NAME"),
        "ffmpeg_origin": ff.origin if ff is not None else None,
        # inside an ensemble-kit image (kit.deploy.image): the flavour and inputs digest it carries, and the
        # digest only its launcher knows (an image cannot contain its own digest)
        "image_env": os.environ.get(IMAGE_ENV_ENV) or None,
        "image_inputs": os.environ.get(IMAGE_INPUTS_ENV) or None,
        "image_digest": os.environ.get(IMAGE_DIGEST_ENV) or None,
    }


def fingerprint(ffmpeg: Any | None = None, *, vmaf_model: str = DEFAULT_VMAF_MODEL,
                host: Any | None = None, lock: dict[str, Any] | None = None,
                find_ffmpeg: Callable[[], Any | None] = _default_ffmpeg,
                scorer: dict[str, Any] | None = None) -> dict[str, Any]:
    """{fingerprint_version, result_env, host} of this environment.

    `ffmpeg` is a `kit.corpus.ffmpeg.FFmpeg` (found with `find_ffmpeg()` when None); `host` a
    `platform.HostPlatform`; `lock` the `locks.current_lock()` identity; `scorer` see `make_result_env`.
    All injectable for tests.
    """
    ff = ffmpeg if ffmpeg is not None else find_ffmpeg()
    return {"fingerprint_version": FINGERPRINT_VERSION,
            "result_env": make_result_env(ff, vmaf_model=vmaf_model, scorer=scorer),
            "host": make_host(host, lock=lock, ff=ff)}


HOST_KEYS_V1 = ("platform", "os", "arch", "cpu_model", "gpus", "lock")


def result_env(fp: dict[str, Any]) -> dict[str, Any]:
    """The compared part of a fingerprint. A version-1 fingerprint (before the split) gives itself
    without its host facts, so old artefacts still compare (and differ, honestly)."""
    if not isinstance(fp, dict):
        return {}
    part = fp.get("result_env")
    if isinstance(part, dict):
        return part
    return {k: v for k, v in fp.items() if k not in HOST_KEYS_V1}


def host_part(fp: dict[str, Any]) -> dict[str, Any]:
    """The recorded-only part of a fingerprint (for v1 fingerprints, their host facts)."""
    if not isinstance(fp, dict):
        return {}
    part = fp.get("host")
    if isinstance(part, dict):
        return part
    return {k: fp[k] for k in HOST_KEYS_V1 if k in fp}


def fingerprint_id(fp: dict[str, Any]) -> str:
    """Short sha256 of the canonical JSON of `result_env`: what rows, verdicts and bundles carry."""
    return object_id(result_env(fp), FINGERPRINT_ID_LEN)


def current(ffmpeg: Any | None = None, scorer: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """(fingerprint, its id) of this environment, for the LOSO results, sidecars and run.json.

    The trainer (kit.train) takes this from its caller instead of computing it, so training never
    imports the ffmpeg tooling the fingerprint describes.
    """
    fp = fingerprint(ffmpeg, scorer=scorer)
    return fp, fingerprint_id(fp)


_warned_unlocked: set[str] = set()


def require_locked_ffmpeg(ff: Any) -> lockfiles.FFmpegLockCheck:
    """The start-up check of the ffmpeg a run uses: refuse (exit 3) a damaged or replaced binary of the
    locked imageio-ffmpeg release, warn once about any other unlocked ffmpeg, pass the locked one."""
    check = lockfiles.check_ffmpeg(ff.path, ff.origin)
    if check.status == lockfiles.TAMPERED:
        raise PrereqError(f"ffmpeg: {check.detail}", hint=lockfiles.reinstall_hint())
    if check.status == lockfiles.UNLOCKED and check.sha256 not in _warned_unlocked:
        _warned_unlocked.add(check.sha256)
        warn(f"ffmpeg: {check.detail}")
    return check


# ---- reading fingerprints --------------------------------------------------------------------


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}; lists as canonical JSON. For naming fingerprint differences."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list):
        return {prefix: canonical_json(d, indent=None).strip()}
    return {prefix: d}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, a's value, b's value) for every leaf where two dicts differ, sorted by key.
    Pass `result_env(fp)` of each side to compare environments."""
    fa, fb = flatten(a), flatten(b)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def _short(value: Any) -> str:
    return shorten(str(value)) if value else "?"


def _describe_scorer(scorer: dict[str, Any]) -> str:
    if scorer.get("backend") == "vmaf-cli":
        return f"vmaf CLI {scorer.get('version')} ({scorer.get('vmaf_backend')}), sha256 {_short(scorer.get('sha256'))}"
    return "ffmpeg's libvmaf filter"


def describe(fp: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows for `ensemble-kit env`'s table: the compared part, then the host."""
    res, host = result_env(fp), host_part(fp)
    ff = res.get("ffmpeg") or {}
    pkgs = ", ".join(f"{k} {v['version']} ({_short(v.get('digest'))})" if v else f"{k} MISSING"
                     for k, v in (res.get("packages") or {}).items())
    conda = ", ".join(f"{k} {v['version']} ({v['build']})" for k, v in (res.get("conda") or {}).items())
    kit_info = res.get("kit") or {}
    lock = host.get("lock") or {}
    lock_text = "none (not installed from a lock)" if lock.get("kind") == "none" else \
        f"{lock.get('kind')} {lock.get('name')} sha256 {_short(lock.get('sha256'))}" + \
        ("" if lock.get("in_sync") else " (installed packages differ: ensemble-kit env check)")
    gpus = "; ".join(f"{g['name']} (driver {g['driver'] or '?'})" for g in host.get("gpus", [])) or "none"
    libvmaf = res.get("libvmaf") or {}
    rows = [
        ("result_env", f"{fingerprint_id(fp)} (compared between runs and boxes)"),
        ("platform", f"{res.get('platform')}, Python {res.get('python')}"),
        ("packages", pkgs),
        *([("conda", conda)] if conda else []),
        ("ffmpeg", f"{ff.get('version')}, sha256 {_short(ff.get('sha256'))}" if ff else "not found"),
        ("libvmaf", f"{libvmaf.get('version') or 'none'} · model {libvmaf.get('model')}"),
        ("scorer", _describe_scorer(res.get("scorer") or {})),
        ("kit", f"{kit_info.get('version')} commit {_short(kit_info.get('commit'))}"
                f"{' (dirty)' if kit_info.get('dirty') else ''}, source {_short(kit_info.get('source_sha256'))}"),
        ("gate defaults", ", ".join(f"{k} {v}" for k, v in (res.get("gate_defaults") or {}).items())),
        *([("numeric env", ", ".join(f"{k}={v}" for k, v in res["numeric_env"].items()))]
          if res.get("numeric_env") else []),
        ("host", f"{host.get('platform')} · {host.get('os')} · Python {host.get('python')} (recorded, not compared)"),
        ("cpu", f"{host.get('cpu_model')} ({host.get('cpu_isa')})"),
        ("gpus", gpus),
        ("lock", lock_text),
    ]
    if host.get("image_env") or host.get("image_digest"):
        rows.append(("image", f"{host.get('image_env') or '?'} image, digest {host.get('image_digest') or 'not given by the launcher'}"
                              f", inputs {_short(host.get('image_inputs'))}"))
    return rows
