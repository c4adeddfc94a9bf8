#!/usr/bin/env python3
"""Regenerate the hash-pinned pip locks in kit/locks/ from pyproject.toml (maintainers: needs uv and PyPI).

    python environments/regenerate.py                   # every lock in kit.env.lockfiles.LOCKS + the dev lock
    python environments/regenerate.py linux-64-cpu      # only these
    python environments/regenerate.py --check           # regenerate into a temp dir and diff (exit 1 on drift)

For each lock, one uv resolve for its platform (`uv pip compile --python-platform ... --only-binary :all:`,
PyPI as of EXCLUDE_NEWER, pyproject.toml's ranges plus the lock's torch pin, imageio-ffmpeg's pin and
setuptools for `--no-build-isolation`) is written twice: `pylock.<lock>.toml` (PEP 751: one entry per
package with the wheels that fit the platform, for pip >= 26.1 and uv) and `<lock>.txt` rendered from it
(`name==version` with exactly those wheels' sha256, for every pip). The dev lock `-r`-includes
linux-64-cpu.txt and adds the `dev` extra's tools at versions resolved with the runtime pins fixed.

The CPU build of torch is not on PyPI. uv takes it from a folder of wheels (--torch-wheels, default
$TORCH_FIND_LINKS, else /opt/wheels), and each such wheel must have the sha256 PyTorch publishes
(TORCH_CPU_WHEELS). Where the folder lacks a platform's +cpu wheel (this build machine cannot reach
download.pytorch.org), the lock is derived: the rest is resolved with the x86_64 +cpu wheel's
Requires-Dist in torch's place, and torch is added with PyTorch's published sha256; the lock's header
says so. Fetch the wheels on a box that reaches PyTorch with
    pip download --no-deps --only-binary :all: --python-version 3.11 --platform manylinux_2_28_aarch64 \\
        --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu -d wheels/
"""

from __future__ import annotations

import argparse
import difflib
import email.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kit.env.lockfiles import DEV_LOCK, LOCKS, LOCKS_DIR, PipLock, ffmpeg_data  # noqa: E402 - the checkout's kit

EXCLUDE_NEWER = "2026-11-29T00:00:00Z"  # PyPI as of this instant: rerunning gives the same locks
PYTHON = "3.11"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# torch 2.13.0+cpu wheels and the sha256 PyTorch's CPU index publishes for them (cross-checked against
# independent public records of the same files).
TORCH_CPU_WHEELS = {
    "linux-64-cpu": ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                     "6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b"),
    "linux-aarch64-cpu": ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl",
                          "84453b69508ec79902f899c5ed9495acb9e2bbe9fda5f1d5d6f19e3c3842e1a7"),
}
BUILD_REQUIREMENT = "setuptools>=77"  # pyproject's build backend: in the lock, so `--no-build-isolation` needs nothing else


def uv() -> str:
    exe = os.environ.get("UV") or shutil.which("uv")
    if not exe:
        sys.exit("error: uv is not on PATH (pip install uv, or set UV=/path/to/uv)")
    return exe


def run_uv(args: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run([uv(), *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        sys.exit(f"error: uv {' '.join(args[:3])} ... failed:\n{done.stderr.strip()}")


def torch_cpu_wheel(lock: PipLock, wheels: Path | None) -> Path | None:
    """The lock's +cpu torch wheel from the wheels folder, checked against PyTorch's published sha256."""
    if lock.name not in TORCH_CPU_WHEELS or wheels is None:
        return None
    name, sha = TORCH_CPU_WHEELS[lock.name]
    path = wheels / name
    if not path.is_file():
        return None
    import hashlib

    with path.open("rb") as f:
        got = hashlib.file_digest(f, "sha256").hexdigest()
    if got != sha:
        sys.exit(f"error: {path} has sha256 {got}, not the {sha} PyTorch publishes: refusing to lock it")
    return path


def torch_requires(wheels: Path | None) -> list[str]:
    """Requires-Dist of the +cpu torch (from any +cpu wheel in the folder: one release, one metadata)."""
    for name, _ in TORCH_CPU_WHEELS.values():
        if wheels is not None and (wheels / name).is_file():
            with zipfile.ZipFile(wheels / name) as whl:
                meta = whl.read(f"torch-{name.split('-')[1]}.dist-info/METADATA").decode()
            msg = email.parser.Parser().parsestr(meta)
            return [r for r in msg.get_all("Requires-Dist", []) if "extra ==" not in r]
    sys.exit("error: no torch +cpu wheel in the wheels folder to read torch's dependencies from")


def compile_pylock(lock: PipLock, out: Path, *, inputs: list[str], constraints: list[str], wheels: Path | None,
                   extras: tuple[str, ...] = (), project: bool = True) -> None:
    with tempfile.TemporaryDirectory(prefix="ekit-lock-") as tmp:
        cons = Path(tmp, "constraints.txt")
        cons.write_text("\n".join(constraints) + "\n")
        req = Path(tmp, "requirements.in")
        req.write_text("\n".join(inputs) + "\n")
        args = ["pip", "compile", *(["pyproject.toml"] if project else []), str(req), "-c", str(cons), "--python-version", PYTHON,
                "--python-platform", lock.uv_platform, "--only-binary", ":all:", "--exclude-newer", EXCLUDE_NEWER,
                "--no-header", "--quiet", "-o", str(out), *(a for e in extras for a in ("--extra", e))]
        if wheels is not None:
            args += ["--find-links", str(wheels)]
        run_uv(args, env={"MACOSX_DEPLOYMENT_TARGET": lock.macos_target} if lock.macos_target else None)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wheel_url(name: str) -> str:
    return f"{TORCH_CPU_INDEX}/{quote(name)}"


def finish_pylock(lock: PipLock, raw: Path, *, derived_torch: bool) -> tuple[str, dict]:
    """uv's pylock with the platform marker, the exact Python, PyTorch's URL for a +cpu torch found in a
    local folder (its sha256 pins the content, the URL says where everyone else gets it), and the
    derived torch entry where there was no wheel."""
    text = raw.read_text()
    text = re.sub(r'url = "file://[^"]*/(torch-[^"/]+\.whl)"', lambda m: f'url = "{wheel_url(m.group(1))}"', text)
    text = text.replace('requires-python = ">=3.11"',
                        f'requires-python = "=={PYTHON}.*"\nenvironments = [{_toml_str(lock.marker)}]', 1)
    if derived_torch:
        name, sha = TORCH_CPU_WHEELS[lock.name]
        text = text.rstrip("\n") + (f'\n\n[[packages]]\nname = "torch"\nversion = "{lock.torch_pin}"\n'
                                    f'wheels = [{{ url = "{wheel_url(name)}", hashes = {{ sha256 = "{sha}" }} }}]\n')
    data = tomllib.loads(text)
    data["packages"].sort(key=lambda p: p["name"])
    return text, data


def header(lock_name: str, what: str, install: str, derived: bool) -> list[str]:
    lines = [f"# ensemble-kit pip lock {lock_name}: {what}, CPython {PYTHON}. Made by `python environments/regenerate.py`",
             f"# (uv, PyPI as of {EXCLUDE_NEWER}); do not edit. Install in one step, every file hash-checked:",
             f"#   {install}"]
    if derived:
        lines.append("# torch +cpu: derived (no wheel at hand when locking): its sha256 is the one PyTorch's CPU index publishes.")
    return lines


def render_txt(data: dict, head: list[str], *, index: str | None, skip: set[str] = frozenset(),
               include: str | None = None) -> str:
    out = [*head]
    if include:
        out.append(f"-r {include}")
    if index:
        out.append(f"--extra-index-url {index}")
    for pkg in sorted(data["packages"], key=lambda p: p["name"]):
        if pkg["name"] in skip:
            continue
        wheels = pkg.get("wheels", [])
        if not wheels:
            sys.exit(f"error: {pkg['name']} has no wheel for this platform")
        out.append(f"{pkg['name']}=={pkg['version']} \\")
        hashes = sorted({w["hashes"]["sha256"] for w in wheels})
        out += [f"    --hash=sha256:{h}" + (" \\" if i < len(hashes) - 1 else "") for i, h in enumerate(hashes)]
        out += [f"    # {w.get('url', w.get('path', '')).rsplit('/', 1)[-1]}" for w in wheels]
    return "\n".join(out) + "\n"


def write_lock(lock: PipLock, dest: Path, wheels: Path | None) -> dict:
    imageio = ffmpeg_data()["imageio_ffmpeg"]
    constraints = [f"imageio-ffmpeg=={imageio}", f"torch=={lock.torch_pin}", *lock.extra_pins]
    cpu_wheel = torch_cpu_wheel(lock, wheels)
    derived = lock.name in TORCH_CPU_WHEELS and cpu_wheel is None
    with tempfile.TemporaryDirectory(prefix="ekit-lock-") as tmp:
        raw = Path(tmp, "pylock.raw.toml")
        if derived:  # torch's own dependencies in its place; torch added afterwards
            project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
            others = [d for d in project["dependencies"] if not re.match(r"torch\b", d)]
            compile_pylock(lock, raw, inputs=[BUILD_REQUIREMENT, *others, *torch_requires(wheels)],
                           constraints=[c for c in constraints if not c.startswith("torch")], wheels=None,
                           project=False)
        else:
            # the wheels folder only for the +cpu torch: `torch==2.13.0` would also match a local 2.13.0+cpu
            compile_pylock(lock, raw, inputs=[BUILD_REQUIREMENT], constraints=constraints,
                           wheels=cpu_wheel.parent if cpu_wheel else None)
        text, data = finish_pylock(lock, raw, derived_torch=derived)
    what = f"{lock.platform}, torch {lock.torch_pin}"
    install = f"pip install --require-hashes --no-deps -r kit/locks/{lock.name}.txt"
    (dest / f"pylock.{lock.name}.toml").write_text(
        "\n".join(header(f"pylock.{lock.name}.toml", what, f"pip install -r kit/locks/pylock.{lock.name}.toml "
                         "(pip >= 26.1) or uv pip sync", derived)) + "\n" + text)
    index = TORCH_CPU_INDEX if lock.torch == "cpu" and lock.platform.startswith("linux") else None
    (dest / f"{lock.name}.txt").write_text(render_txt(data, header(lock.name, what, install, derived), index=index))
    return data


def write_dev_lock(runtime: dict, dest: Path, wheels: Path | None) -> None:
    """linux-64-cpu plus the `dev` extra's tools, resolved with every runtime pin fixed."""
    base = next(lock for lock in LOCKS if lock.name == "linux-64-cpu")
    pins = [f"{p['name']}=={p['version']}" for p in runtime["packages"]]
    with tempfile.TemporaryDirectory(prefix="ekit-lock-") as tmp:
        raw = Path(tmp, "pylock.raw.toml")
        compile_pylock(base, raw, inputs=[BUILD_REQUIREMENT], constraints=pins, wheels=wheels, extras=("dev",))
        _, data = finish_pylock(base, raw, derived_torch=False)
    names = {p["name"] for p in runtime["packages"]}
    install = f"pip install --require-hashes --no-deps -r kit/locks/{DEV_LOCK}.txt"
    head = header(DEV_LOCK, f"{base.name}.txt plus the test and lint tools", install, False)
    (dest / f"{DEV_LOCK}.txt").write_text(render_txt(data, head, index=None, skip=names, include=f"{base.name}.txt"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("locks", nargs="*", help="lock names (default: all)")
    parser.add_argument("--torch-wheels", type=Path,
                        default=Path(os.environ.get("TORCH_FIND_LINKS") or "/opt/wheels"),
                        help="folder with the torch +cpu wheels (default $TORCH_FIND_LINKS, else /opt/wheels)")
    parser.add_argument("--check", action="store_true", help="regenerate into a temp dir and diff with kit/locks/")
    args = parser.parse_args(argv)
    wanted = args.locks or [lock.name for lock in LOCKS] + [DEV_LOCK]
    unknown = set(wanted) - {lock.name for lock in LOCKS} - {DEV_LOCK}
    if unknown:
        parser.error(f"unknown lock(s): {', '.join(sorted(unknown))}")
    wheels = args.torch_wheels if args.torch_wheels.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="ekit-locks-") as tmp:
        dest = Path(tmp) if args.check else LOCKS_DIR
        runtime = None
        for lock in LOCKS:
            if lock.name in wanted or (lock.name == "linux-64-cpu" and DEV_LOCK in wanted):
                data = write_lock(lock, dest, wheels)
                runtime = data if lock.name == "linux-64-cpu" else runtime
                print(f"{'checked' if args.check else 'wrote'} {lock.name}: {len(data['packages'])} packages")
        if DEV_LOCK in wanted:
            write_dev_lock(runtime, dest, wheels)
            print(f"{'checked' if args.check else 'wrote'} {DEV_LOCK}")
        if args.check:
            drift = 0
            for new in sorted(dest.iterdir()):
                old = LOCKS_DIR / new.name
                diff = list(difflib.unified_diff(old.read_text().splitlines() if old.is_file() else [],
                                                 new.read_text().splitlines(), str(old), str(new), lineterm=""))
                if diff:
                    drift += 1
                    print("\n".join(diff[:40]))
            print(f"{drift} lock file(s) differ from kit/locks/" if drift else "kit/locks/ is up to date")
            return 1 if drift else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
