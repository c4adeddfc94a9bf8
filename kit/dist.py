"""The distribution tarball: everything a collaborator needs to run the kit without a clone.

The old kit's tarball left out files its scripts needed. This one is built from an explicit list
(the package, its build files, the locks, the docs) plus a generated `run` bootstrap, and `tests/
test_dist.py` proves it is self-contained: unpack into an empty folder, install, run the demo.
The bytes are reproducible (kit.archive), so the same checkout gives the same tarball.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from kit import __version__
from kit.errors import BadInput, PrereqError, WorkFailed
from kit.fsio import canonical_json, sha256_file, write_text

# Top-level files and folders of a checkout that go in (when present); everything else stays out.
TOP_FILES = ("pyproject.toml", "pixi.toml", "pixi.lock", "README.md", "LICENSE", "LICENSE.txt", "CHANGELOG.md")
TOP_DIRS = ("kit", "environments", "docs")
EXTRA_FILES = ("binaries/README.md",)
SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp")
SIZE_LIMIT = 50 << 20  # the promise for a tarball without wheels

# pixi platform -> the pip platform tags whose wheels run there (newest first).
PIP_PLATFORMS: dict[str, tuple[str, ...]] = {
    "linux-64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"),
    "linux-aarch64": ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"),
    "osx-arm64": ("macosx_14_0_arm64", "macosx_13_0_arm64", "macosx_12_0_arm64", "macosx_11_0_arm64"),
    "osx-64": ("macosx_13_0_x86_64", "macosx_12_0_x86_64", "macosx_11_0_x86_64", "macosx_10_15_x86_64",
               "macosx_10_9_x86_64"),
}
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
# pip: offline from wheels/ when this tarball carries them, otherwise from PyPI with torch pinned to
# __TORCH__ first (on Linux an unpinned `pip install torch` pulls a multi-GB CUDA build; set
# EKIT_TORCH_INDEX=https://download.pytorch.org/whl/cpu to force the CPU build from PyTorch's index).
# EKIT_NO_PIXI=1 forces the venv path. Exit codes are ensemble-kit's (docs/operator-guide.md).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ "$#" -eq 0 ] && set -- pipeline

guess_pixi_env() {
  if [ "$(uname -s)" = Darwin ]; then echo osx; return; fi
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo cuda; return; fi
  for vendor in /sys/class/drm/renderD*/device/vendor; do
    if [ -r "$vendor" ] && [ "$(cat "$vendor")" = 0x8086 ]; then echo sycl; return; fi
  done
  echo default
}

if [ "${EKIT_NO_PIXI:-0}" != 1 ] && command -v pixi >/dev/null 2>&1; then
  env_name="${EKIT_PIXI_ENV:-$(guess_pixi_env)}"
  locked=()
  [ -f "$here/pixi.lock" ] && locked=(--locked)
  echo "ensemble-kit: pixi environment '$env_name'" >&2
  exec pixi run --manifest-path "$here/pixi.toml" "${locked[@]}" -e "$env_name" ensemble-kit "$@"
fi

py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1 || ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: ensemble-kit needs Python >= 3.11 (found: $("$py" -V 2>&1 || echo none)); install it, or install pixi (https://pixi.sh) and rerun ./run" >&2
  exit 3
fi
venv="${EKIT_VENV:-$here/.venv}"
stamp="$venv/.ensemble-kit-installed"
if [ ! -f "$stamp" ]; then
  echo "ensemble-kit: first run, installing into $venv (once)" >&2
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"   # an existing venv (EKIT_VENV) is reused
  pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
  if [ -d "$here/__WHEELS__" ]; then
    # Offline: every locked wheel for this platform travelled in the tarball.
    if [ -n "__REQS__" ]; then
      "${pip[@]}" --no-index --find-links "$here/__WHEELS__" --require-hashes -r "$here/__REQS__"
    fi
    "${pip[@]}" --no-index --find-links "$here/__WHEELS__" --no-deps "$here"
  else
    torch_index=()
    [ -n "${EKIT_TORCH_INDEX:-}" ] && torch_index=(--index-url "$EKIT_TORCH_INDEX")
    "${pip[@]}" "${torch_index[@]}" "torch==__TORCH__"
    "${pip[@]}" "$here"
  fi
  touch "$stamp"
fi
exec "$venv/bin/ensemble-kit" "$@"
"""


def source_root() -> Path:
    """The checkout this kit runs from; `dist` packs a checkout, not an installed copy."""
    root = Path(__file__).resolve().parents[1]
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


def requirements_for(root: Path, platform: str) -> Path:
    """The hash-pinned requirements file in environments/ for a pixi platform (linux-64, osx-arm64…)."""
    env_dir = root / "environments"
    candidates = sorted(p for p in env_dir.glob("*.txt") if platform in p.name) if env_dir.is_dir() else []
    # Prefer the CPU/default environment's lock: the bootstrap's venv path is the CPU path.
    candidates.sort(key=lambda p: (not any(k in p.name for k in ("default", "cpu")), p.name))
    if not candidates:
        have = ", ".join(sorted(p.name for p in env_dir.glob("*.txt"))) if env_dir.is_dir() else "none"
        raise BadInput(f"--with-wheels {platform}: no requirements lock for it in {env_dir} (have: {have})",
                       hint="pick a platform that environments/ has a .txt lock for, e.g. linux-64")
    return candidates[0]


def download_wheels(root: Path, platform: str, dest: Path) -> Path:
    """`pip download` every locked wheel for `platform` plus a wheel of the kit itself into `dest`."""
    if platform not in PIP_PLATFORMS:
        raise BadInput(f"--with-wheels {platform!r}: unknown platform", hint=f"choose from {', '.join(PIP_PLATFORMS)}")
    reqs = requirements_for(root, platform)
    dest.mkdir(parents=True, exist_ok=True)
    plat_args = [a for tag in PIP_PLATFORMS[platform] for a in ("--platform", tag)]
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
           *plat_args, "--implementation", "cp", "--python-version", "3.11", "--require-hashes",
           "-r", str(reqs), "-d", str(dest)]
    _run(cmd, f"downloading the locked wheels for {platform}")
    _run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps", "-w", str(dest), str(root)],
         "building the ensemble-kit wheel")
    return reqs


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise PrereqError(f"{what} failed: {tail[0]}", hint="check the network/PyPI access, or build without --with-wheels")


@dataclass(frozen=True)
class DistResult:
    path: Path
    n_files: int
    size: int
    sha256: str


def render_run_script(*, wheels: bool, reqs_rel: str | None) -> str:
    text = RUN_TEMPLATE.replace("__TORCH__", torch_pin()).replace("__WHEELS__", WHEELS_DIR)
    return text.replace("__REQS__", reqs_rel if (wheels and reqs_rel) else "")


def dist_name(with_wheels: str | None) -> str:
    suffix = f"-{with_wheels}-wheels" if with_wheels else ""
    return f"ensemble-kit-{__version__}{suffix}.tar.gz"


def make_dist(out: Path | None = None, *, with_wheels: str | None = None, root: Path | None = None) -> DistResult:
    """Write the distribution tarball (default `dist/ensemble-kit-<version>.tar.gz` in the checkout)."""
    from kit.archive import write_reproducible_tar

    root = Path(root) if root is not None else source_root()
    name = dist_name(with_wheels)
    target = Path(out) if out is not None else root / "dist" / name
    if target.is_dir():
        target = target / name
    stem = f"ensemble-kit-{__version__}"
    files = source_files(root)
    if not any(rel == "pyproject.toml" for rel, _ in files):
        raise BadInput(f"{root}: no pyproject.toml", hint="run dist from the kit's checkout")
    with tempfile.TemporaryDirectory(prefix="ekit-dist-") as tmp:
        staging = Path(tmp)
        extra: list[tuple[str, Path]] = []
        reqs_rel = None
        if with_wheels:
            reqs = download_wheels(root, with_wheels, staging / WHEELS_DIR)
            reqs_rel = reqs.relative_to(root).as_posix()
            extra += [(f"{WHEELS_DIR}/{w.name}", w) for w in sorted((staging / WHEELS_DIR).iterdir()) if w.is_file()]
        run_script = staging / "run"
        write_text(run_script, render_run_script(wheels=bool(with_wheels), reqs_rel=reqs_rel))
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

