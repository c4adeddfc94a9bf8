"""The distribution tarball: everything a collaborator needs to run the kit without a clone.

The old kit's tarball left out files its scripts needed. This one is built from an explicit list
(the package with its locks in kit/locks/, its build files, the docs) plus a generated `run` bootstrap
and `kit/_build.json` (the commit it was packed from, for the fingerprint), and `tests/
test_dist.py` proves it is self-contained: unpack into an empty folder, install, run the demo.
The bytes are reproducible (kit.core.archive), so the same checkout gives the same tarball.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from kit import __version__
from kit.core import proc
from kit.core.archive import write_reproducible_tar
from kit.core.errors import BadInput, PrereqError, WorkFailed
from kit.core.fsio import canonical_json, out_target, sha256_file, temp_dir, write_text
from kit.env import lockfiles
from kit.env.fingerprint import BUILD_INFO, build_info
from kit.env.platform import INTEL_PCI_VENDOR, PIXI_ENVS

# Top-level files and folders of a checkout that go in (when present); everything else stays out.
TOP_FILES = ("pyproject.toml", "setup.py", "pixi.toml", "pixi.lock", "README.md", "LICENSE", "LICENSE.txt", "CHANGELOG.md")
# tests/, bench/ and ci/ travel too: `pixi run test` and the benches must work from the tarball (tests that
# need the lead's ../shared/media skip themselves).
TOP_DIRS = ("kit", "environments", "docs", "tests", "bench", "ci")
EXTRA_FILES = ("binaries/README.md",)
SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp")
SIZE_LIMIT = 50 << 20  # the promise for a tarball without wheels

WHEELS_DIR = "wheels"
BUILD_INFO_NAME = BUILD_INFO.name


RUN_TEMPLATE = r"""#!/usr/bin/env bash
# ensemble-kit bootstrap: the one command a collaborator runs after unpacking.
#
#   ./run                              the demo pipeline (what `pixi run pipeline` does)
#   ./run pipeline --ref-dir refs/     any ensemble-kit command and its options
#   ./run prereqs                      what this box has and lacks
#
# With pixi on PATH it runs the locked pixi environment for this box (EKIT_PIXI_ENV=default|cuda|intel-media|osx
# overrides the guess). Without pixi it makes a venv in .venv (EKIT_VENV overrides) and installs, in one
# hash-checked step, the pip lock for this platform from kit/locks/ (torch included: the CPU build on
# Linux; EKIT_LOCK=linux-64-cuda picks PyPI's CUDA torch for an NVIDIA box), offline from wheels/ when
# this tarball carries them. EKIT_NO_PIXI=1 forces the venv path. Exit codes are ensemble-kit's
# (docs/operator-guide.md).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ "$#" -eq 0 ] && set -- pipeline

guess_pixi_env() {  # kit.env.platform's family detection, in bash (its PIXI_ENVS table)
  if [ "$(uname -s)" = Darwin ]; then echo __ENV_DARWIN__; return; fi
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo __ENV_CUDA__; return; fi
  for vendor in /sys/class/drm/renderD*/device/vendor; do
    if [ -r "$vendor" ] && [ "$(cat "$vendor")" = __INTEL_VENDOR__ ]; then echo __ENV_SYCL__; return; fi
  done
  echo __ENV_CPU__
}

if [ "${EKIT_NO_PIXI:-0}" != 1 ] && command -v pixi >/dev/null 2>&1; then
  env_name="${EKIT_PIXI_ENV:-$(guess_pixi_env)}"
  locked=()
  [ -f "$here/pixi.lock" ] && locked=(--locked)
  echo "ensemble-kit: pixi environment '$env_name'" >&2
  # ${a[@]+"${a[@]}"}: an empty array under `set -u` is an error in macOS's bash 3.2
  exec pixi run --manifest-path "$here/pixi.toml" ${locked[@]+"${locked[@]}"} -e "$env_name" ensemble-kit "$@"
fi

py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1 || ! "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: the pip locks are for Python 3.11 (found: $("$py" -V 2>&1 || echo none)); set PYTHON=python3.11, or install pixi (https://pixi.sh) and rerun ./run" >&2
  exit 3
fi
venv="${EKIT_VENV:-$here/.venv}"
stamp="$venv/.ensemble-kit-installed"
# This platform's default pip lock (kit.env.lockfiles.LOCKS), unless EKIT_LOCK names another.
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) lock=__LOCK_LINUX_64__ ;;
  Linux-aarch64) lock=__LOCK_LINUX_AARCH64__ ;;
  Darwin-arm64) lock=__LOCK_OSX_ARM64__ ;;
  Darwin-x86_64) lock=__LOCK_OSX_64__ ;;
  *) lock="" ;;
esac
lock="${EKIT_LOCK:-$lock}"
if [ -z "$lock" ] || [ ! -f "$here/kit/locks/$lock.txt" ]; then
  echo "error: no pip lock for $(uname -s)-$(uname -m)${lock:+ (kit/locks/$lock.txt)}; install pixi (https://pixi.sh) and rerun ./run" >&2
  exit 3
fi
# The kit is installed editable from this folder: it is the kit's home, where kit/locks/ (the locks the
# drift check compares with) and binaries/<platform>/ (tools this box stages) are found.
if [ ! -f "$stamp" ]; then
  echo "ensemble-kit: first run, installing into $venv from kit/locks/$lock.txt (once)" >&2
  exec 3>&1 1>&2  # installer chatter to stderr: stdout carries only ensemble-kit's result lines
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"   # an existing venv (EKIT_VENV) is reused
  pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
  offline=()
  # Offline: every locked wheel for this platform travelled in the tarball.
  [ -d "$here/__WHEELS__" ] && offline=(--no-index --find-links "$here/__WHEELS__")
  # One step, every file hash-checked (torch and setuptools included); then the kit itself, built with
  # the locked setuptools (no unverified download).
  "${pip[@]}" ${offline[@]+"${offline[@]}"} --require-hashes --no-deps -r "$here/kit/locks/$lock.txt"
  "${pip[@]}" ${offline[@]+"${offline[@]}"} --no-deps --no-build-isolation -e "$here"
  touch "$stamp"
  exec 1>&3 3>&-
fi
exec "$venv/bin/ensemble-kit" "$@"
"""


def source_root() -> Path:
    """The checkout this kit runs from; `dist` packs a checkout, not an installed copy."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "kit" / "__init__.py").is_file():
        raise BadInput(f"dist needs the kit's source checkout, but {root} has no pyproject.toml",
                       hint="run `ensemble-kit dist` from a clone or an unpacked dist tarball")
    return root


def _wanted(rel: Path) -> bool:
    return not (SKIP_PARTS & set(rel.parts)) and not rel.name.endswith(SKIP_SUFFIXES) and not rel.name.startswith(".") \
        and rel.as_posix() != f"kit/{BUILD_INFO_NAME}"  # written fresh for each tarball


def source_files(root: Path) -> list[tuple[str, Path]]:
    """(relative path, file) for every file the tarball carries from the checkout, sorted."""
    files: dict[str, Path] = {}
    for name in (*TOP_FILES, *EXTRA_FILES):
        p = root / name
        if p.is_file():
            files[name] = p
    for d in TOP_DIRS:
        base = root / d
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            rel = p.relative_to(root)
            if p.is_file() and _wanted(rel):
                files[rel.as_posix()] = p
    return sorted(files.items())


def download_wheels(root: Path, lock_name: str, dest: Path) -> None:
    """`pip download` every wheel of a pip lock (torch included, hash-checked), plus a wheel of the kit, into `dest`."""
    lock = lockfiles.lock_named(lock_name)
    if lock is None:
        raise BadInput(f"--with-wheels {lock_name!r}: no such lock",
                       hint=f"choose from {', '.join(x.name for x in lockfiles.LOCKS)} (kit/locks/)")
    path = root / "kit" / "locks" / f"{lock.name}.txt"
    if not path.is_file():
        raise BadInput(f"--with-wheels {lock_name}: {path} is missing", hint="run python environments/regenerate.py")
    dest.mkdir(parents=True, exist_ok=True)
    plat_args = [a for tag in lock.python_platforms for a in ("--platform", tag)]
    _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:", *plat_args,
          "--implementation", "cp", "--python-version", "3.11", "--no-deps", "--require-hashes", "-r", str(path),
          "-d", str(dest)], f"downloading the locked wheels of {lock.name}")
    _run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "--no-build-isolation",
          "-w", str(dest), str(root)],
         "building the ensemble-kit wheel")


def _run(cmd: list[str], what: str) -> None:
    try:
        done = proc.run(cmd, stage=what, check=False)
        failed = None if done.ok else proc.last_line(done.stderr or done.stdout, "(no output)")
    except proc.ToolFailed as exc:
        failed = exc.reason
    if failed is not None:
        raise PrereqError(f"{what} failed: {failed}", hint="check the network/PyPI access, or build without --with-wheels")


@dataclass(frozen=True)
class DistResult:
    path: Path
    n_files: int
    size: int
    sha256: str


def render_run_script() -> str:
    default_lock = {platform: lockfiles.locks_for(platform)[0].name
                    for platform in ("linux-64", "linux-aarch64", "osx-arm64", "osx-64")}
    values = {"__WHEELS__": WHEELS_DIR,
              "__INTEL_VENDOR__": INTEL_PCI_VENDOR, "__ENV_DARWIN__": PIXI_ENVS["darwin"],
              "__ENV_CUDA__": PIXI_ENVS["linux-cuda"], "__ENV_SYCL__": PIXI_ENVS["linux-sycl"],
              "__ENV_CPU__": PIXI_ENVS["linux-cpu"], "__LOCK_LINUX_64__": default_lock["linux-64"],
              "__LOCK_LINUX_AARCH64__": default_lock["linux-aarch64"], "__LOCK_OSX_ARM64__": default_lock["osx-arm64"],
              "__LOCK_OSX_64__": default_lock["osx-64"]}
    text = RUN_TEMPLATE
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def dist_name(with_wheels: str | None) -> str:
    suffix = f"-{with_wheels}-wheels" if with_wheels else ""
    return f"ensemble-kit-{__version__}{suffix}.tar.gz"


def make_dist(out: str | Path | None = None, *, with_wheels: str | None = None, root: Path | None = None) -> DistResult:
    """Write the distribution tarball (default `dist/ensemble-kit-<version>.tar.gz` in the checkout)."""
    root = Path(root) if root is not None else source_root()
    name = dist_name(with_wheels)
    target = out_target(out, name) if out is not None else root / "dist" / name
    stem = f"ensemble-kit-{__version__}"
    files = source_files(root)
    if not any(rel == "pyproject.toml" for rel, _ in files):
        raise BadInput(f"{root}: no pyproject.toml", hint="run dist from the kit's checkout")
    with temp_dir("dist") as tmp:
        staging = Path(tmp)
        extra: list[tuple[str, Path]] = []
        if with_wheels:
            download_wheels(root, with_wheels, staging / WHEELS_DIR)
            extra += [(f"{WHEELS_DIR}/{w.name}", w) for w in sorted((staging / WHEELS_DIR).iterdir()) if w.is_file()]
        run_script = staging / "run"
        write_text(run_script, render_run_script())
        run_script.chmod(0o755)
        extra.append(("run", run_script))
        build_json = staging / BUILD_INFO_NAME  # the commit this tarball is packed from (the fingerprint's kit.commit)
        write_text(build_json, canonical_json(build_info(root)))
        extra.append((f"kit/{BUILD_INFO_NAME}", build_json))
        listing = sorted(files + extra)
        manifest = staging / "DIST.json"
        write_text(manifest, canonical_json({
            "name": "ensemble-kit", "version": __version__, "with_wheels": with_wheels,
            "files": [{"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)} for rel, p in listing],
        }))
        members = [(f"{stem}/{rel}", p) for rel, p in listing] + [(f"{stem}/DIST.json", manifest)]
        write_reproducible_tar(members, target)
    size = target.stat().st_size
    if not with_wheels and size > SIZE_LIMIT:
        raise WorkFailed(f"{target} is {size / 2**20:.1f} MiB, over the {SIZE_LIMIT >> 20} MiB budget",
                         hint="something large slipped into kit/, docs/ or environments/; remove it")
    return DistResult(path=target, n_files=len(members), size=size, sha256=sha256_file(target))

