"""The distribution tarball: everything a collaborator needs to run the kit without a clone.

The old kit's tarball left out files its scripts needed. This one is built from an explicit list
(the package, its build files, the locks, the docs) plus a generated `run` bootstrap, and `tests/
test_dist.py` proves it is self-contained: unpack into an empty folder, install, run the demo.
The bytes are reproducible (kit.core.archive), so the same checkout gives the same tarball.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from kit import __version__
from kit.core import proc
from kit.core.archive import write_reproducible_tar
from kit.core.errors import BadInput, PrereqError, WorkFailed
from kit.core.fsio import canonical_json, out_target, sha256_file, temp_dir, write_text
from kit.env.platform import INTEL_PCI_VENDOR, PIXI_ENVS

# Top-level files and folders of a checkout that go in (when present); everything else stays out.
TOP_FILES = ("pyproject.toml", "pixi.toml", "pixi.lock", "README.md", "LICENSE", "LICENSE.txt", "CHANGELOG.md")
# tests/, bench/ and ci/ travel too: `pixi run test` and the benches must work from the tarball (tests that
# need the lead's ../shared/media skip themselves).
TOP_DIRS = ("kit", "environments", "docs", "tests", "bench", "ci")
EXTRA_FILES = ("binaries/README.md",)
SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp")
SIZE_LIMIT = 50 << 20  # the promise for a tarball without wheels

# Platforms a wheels tarball can target (kit.env.locks' pip platform keys) -> pip platform tags (newest first).
# Each needs its hash-pinned lock in environments/ (see WHEEL_LOCKS).
PIP_PLATFORMS: dict[str, tuple[str, ...]] = {
    "linux-x86_64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"),
}
# platform -> (the runtime lock, the torch pin file): the same files the venv bootstrap installs from.
WHEEL_LOCKS: dict[str, tuple[str, str]] = {
    "linux-x86_64": ("environments/linux-cpu.txt", "environments/torch-cpu.txt"),
}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
WHEELS_DIR = "wheels"


def torch_pin() -> str:
    """The torch version the kit is tested with: the venv's own, so the bootstrap installs the same."""
    try:
        return metadata.version("torch").split("+")[0]
    except metadata.PackageNotFoundError:
        return "2.13.0"


RUN_TEMPLATE = r"""#!/usr/bin/env bash
# ensemble-kit bootstrap: the one command a collaborator runs after unpacking.
#
#   ./run                              the demo pipeline (what `pixi run pipeline` does)
#   ./run pipeline --ref-dir refs/     any ensemble-kit command and its options
#   ./run prereqs                      what this box has and lacks
#
# With pixi on PATH it runs the locked pixi environment for this box (EKIT_PIXI_ENV=default|cuda|sycl|osx
# overrides the guess). Without pixi it makes a venv in .venv (EKIT_VENV overrides) and installs with
# pip: offline from wheels/ when this tarball carries them, otherwise from PyPI with the hash-pinned
# lock in environments/ and torch __TORCH__ (CPU build) installed first: an unpinned `pip install torch`
# pulls a multi-GB CUDA build on Linux. EKIT_TORCH_INDEX overrides where the CPU torch comes from.
# EKIT_NO_PIXI=1 forces the venv path. Exit codes are ensemble-kit's (docs/operator-guide.md).
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
if ! command -v "$py" >/dev/null 2>&1 || ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: ensemble-kit needs Python >= 3.11 (found: $("$py" -V 2>&1 || echo none)); install it, or install pixi (https://pixi.sh) and rerun ./run" >&2
  exit 3
fi
venv="${EKIT_VENV:-$here/.venv}"
stamp="$venv/.ensemble-kit-installed"
# The hash-pinned lock for this platform, when environments/ has one (torch is pinned apart from it).
lock="" torch_req=""
if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then
  lock="environments/linux-cpu.txt" torch_req="environments/torch-cpu.txt"
fi
# The kit is installed editable from this folder: it is the kit's home, where environments/ (the locks the
# drift check compares with) and binaries/<platform>/ (tools this box stages) are found.
if [ ! -f "$stamp" ]; then
  echo "ensemble-kit: first run, installing into $venv (once)" >&2
  exec 3>&1 1>&2  # installer chatter to stderr: stdout carries only ensemble-kit's result lines
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"   # an existing venv (EKIT_VENV) is reused
  pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
  if [ -d "$here/__WHEELS__" ]; then
    # Offline: every locked wheel for this platform travelled in the tarball.
    offline=(--no-index --find-links "$here/__WHEELS__")
    [ -f "$here/$torch_req" ] && "${pip[@]}" "${offline[@]}" -r "$here/$torch_req"
    [ -f "$here/$lock" ] && "${pip[@]}" "${offline[@]}" --require-hashes -r "$here/$lock"
    "${pip[@]}" "${offline[@]}" --no-deps -e "$here"
  else
    # CPU torch first, from PyTorch's CPU index: PyPI's Linux torch is a multi-GB CUDA build.
    if [ -f "$here/$torch_req" ]; then
      "${pip[@]}" --extra-index-url "${EKIT_TORCH_INDEX:-__TORCH_INDEX__}" -r "$here/$torch_req"
    else
      "${pip[@]}" "torch==__TORCH__"
    fi
    if [ -f "$here/$lock" ]; then
      "${pip[@]}" --require-hashes -r "$here/$lock"
      "${pip[@]}" --no-deps -e "$here"
    else
      "${pip[@]}" -e "$here"
    fi
  fi
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
    return not (SKIP_PARTS & set(rel.parts)) and not rel.name.endswith(SKIP_SUFFIXES) and not rel.name.startswith(".")


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


def download_wheels(root: Path, platform: str, dest: Path) -> None:
    """`pip download` torch and every locked wheel for `platform`, plus a wheel of the kit, into `dest`."""
    if platform not in PIP_PLATFORMS:
        raise BadInput(f"--with-wheels {platform!r}: no lock for that platform",
                       hint=f"choose from {', '.join(PIP_PLATFORMS)} (environments/ holds their locks)")
    lock, torch_req = (root / rel for rel in WHEEL_LOCKS[platform])
    for need in (lock, torch_req):
        if not need.is_file():
            raise BadInput(f"--with-wheels {platform}: {need} is missing", hint="run bash environments/regenerate.sh")
    dest.mkdir(parents=True, exist_ok=True)
    plat_args = [a for tag in PIP_PLATFORMS[platform] for a in ("--platform", tag)]
    base = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
            *plat_args, "--implementation", "cp", "--python-version", "3.11", "--no-deps", "-d", str(dest)]
    _run([*base, "--extra-index-url", TORCH_CPU_INDEX, "-r", str(torch_req)], f"downloading torch for {platform}")
    _run([*base, "--require-hashes", "-r", str(lock)], f"downloading the locked wheels for {platform}")
    _run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "-w", str(dest), str(root)],
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
    values = {"__TORCH_INDEX__": TORCH_CPU_INDEX, "__TORCH__": torch_pin(), "__WHEELS__": WHEELS_DIR,
              "__INTEL_VENDOR__": INTEL_PCI_VENDOR, "__ENV_DARWIN__": PIXI_ENVS["darwin"],
              "__ENV_CUDA__": PIXI_ENVS["linux-cuda"], "__ENV_SYCL__": PIXI_ENVS["linux-sycl"],
              "__ENV_CPU__": PIXI_ENVS["linux-cpu"]}
    text = RUN_TEMPLATE
    for key, value in values.items():  # __TORCH_INDEX__ before its prefix __TORCH__
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
        listing = sorted(files + extra)
        manifest = staging / "DIST.json"
        write_text(manifest, canonical_json({
            "name": "ensemble-kit", "version": __version__, "with_wheels": with_wheels, "torch": torch_pin(),
            "files": [{"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)} for rel, p in listing],
        }))
        members = [(f"{stem}/{rel}", p) for rel, p in listing] + [(f"{stem}/DIST.json", manifest)]
        write_reproducible_tar(members, target)
    size = target.stat().st_size
    if not with_wheels and size > SIZE_LIMIT:
        raise WorkFailed(f"{target} is {size / 2**20:.1f} MiB, over the {SIZE_LIMIT >> 20} MiB budget",
                         hint="something large slipped into kit/, docs/ or environments/; remove it")
    return DistResult(path=target, n_files=len(members), size=size, sha256=sha256_file(target))

