"""The pip locks in kit/locks/ (kit.env.lockfiles): they agree with pyproject.toml, the .txt and the pylock
are one resolve, every wheel fits its platform, torch and ffmpeg are the published files, and the wheel
carries them. Slow (PyPI): a real one-step install in two clean venvs with the same result_env, every
other platform's lock through uv's resolver, every hash against the index's, the macOS locks downloaded
and hash-checked by pip. CI installs the linux-64-cpu(-dev) lock itself on every run (.ci/run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
from packaging import tags
from packaging.requirements import Requirement
from packaging.utils import parse_wheel_filename

from kit.env import lockfiles
from kit.env.locks import canonical_name, parse_requirements_lock

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
sys.path.insert(0, str(ROOT / "environments"))
import regenerate  # noqa: E402 - environments/regenerate.py: its tables of published torch wheels

LOCK_IDS = [lock.name for lock in lockfiles.LOCKS]
DEV_LOCK_PATH = lockfiles.LOCKS_DIR / f"{lockfiles.DEV_LOCK}.txt"


def disagreements(pins: dict[str, str], requirements: list[str]) -> list[str]:
    """Every requirement the pinned set does not satisfy, by name (the lock-vs-pyproject check)."""
    out = []
    for text in requirements:
        req = Requirement(text)
        name = canonical_name(req.name)
        if name == "ensemble-kit":
            continue
        if name not in pins:
            out.append(f"{name} is not in the lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            out.append(f"{name}=={pins[name]} is outside {req.specifier}")
    return out


def txt_hashes(path: Path) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, sha256s) of a hash-pinned requirements file (its own lines, not includes)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)", line)
        if m:
            out[canonical_name(m.group(1))] = (m.group(2), set(re.findall(r"sha256:([0-9a-f]{64})", m.group(3))))
    return out


def pylock(lock: lockfiles.PipLock) -> dict:
    return tomllib.loads(lock.pylock.read_text())


def wheel_name(wheel: dict) -> str:
    return wheel["url"].rsplit("/", 1)[-1].replace("%2B", "+")


# ---- offline: what CI runs ----------------------------------------------------------------------


@pytest.mark.parametrize("lock", lockfiles.LOCKS, ids=LOCK_IDS)
def test_lock_agrees_with_pyproject(lock):
    """A dependency added, dropped or re-ranged in pyproject.toml without regenerating fails here, by name."""
    pins = parse_requirements_lock(lock.path)
    wanted = [*PROJECT["dependencies"], *PYPROJECT["build-system"]["requires"]]
    assert disagreements(pins, wanted) == [], f"{lock.path.name}: run python environments/regenerate.py"
    assert pins["torch"] == lock.torch_pin
    assert pins["imageio-ffmpeg"] == lockfiles.ffmpeg_data()["imageio_ffmpeg"]


def test_dev_lock_is_the_runtime_lock_plus_the_tools():
    extras = PROJECT["optional-dependencies"]
    pins = parse_requirements_lock(DEV_LOCK_PATH)
    assert disagreements(pins, [*PROJECT["dependencies"], *extras["test"], *extras["dev"]]) == []
    runtime = parse_requirements_lock(lockfiles.lock_named("linux-64-cpu").path)
    assert {k: pins[k] for k in runtime} == runtime  # the tools never move a runtime pin
    assert not set(txt_hashes(DEV_LOCK_PATH)) & set(runtime)  # each pin in one file only


def test_the_check_fails_when_a_lock_and_pyproject_disagree():
    pins = parse_requirements_lock(lockfiles.lock_named("linux-64-cpu").path)
    assert disagreements(pins, ["numpy>=3", "rich>=13", "brand-new-dep>=1"]) == [
        f"numpy=={pins['numpy']} is outside >=3", "brand-new-dep is not in the lock"]


@pytest.mark.parametrize("lock", lockfiles.LOCKS, ids=LOCK_IDS)
def test_txt_and_pylock_are_one_resolve(lock):
    data = pylock(lock)
    from_pylock = {canonical_name(p["name"]): (p["version"], {w["hashes"]["sha256"] for w in p["wheels"]})
                   for p in data["packages"]}
    assert from_pylock == txt_hashes(lock.path)
    assert data["lock-version"] == "1.0" and data["requires-python"] == "==3.11.*"
    assert data["environments"] == [lock.marker]


@pytest.mark.parametrize("lock", lockfiles.LOCKS, ids=LOCK_IDS)
def test_every_wheel_fits_the_platform(lock):
    """Each locked file installs on CPython 3.11 on the lock's platform (pip's own tag rules)."""
    supported = {*tags.cpython_tags((3, 11), platforms=lock.python_platforms),
                 *tags.compatible_tags((3, 11), platforms=lock.python_platforms)}
    for package in pylock(lock)["packages"]:
        assert package["wheels"], package["name"]
        for wheel in package["wheels"]:
            _, _, _, wheel_tags = parse_wheel_filename(wheel_name(wheel))
            assert wheel_tags & supported, f"{lock.name}: {wheel_name(wheel)} does not install there"


@pytest.mark.parametrize("lock", lockfiles.LOCKS, ids=LOCK_IDS)
def test_torch_and_ffmpeg_are_the_published_files(lock):
    packages = {p["name"]: p for p in pylock(lock)["packages"]}
    (ffmpeg_wheel,) = packages["imageio-ffmpeg"]["wheels"]
    entry = lockfiles.ffmpeg_data()["platforms"][lock.platform]
    # the wheel the lock installs is the one whose ffmpeg binary sha256 kit/locks/ffmpeg.json records
    assert (wheel_name(ffmpeg_wheel), ffmpeg_wheel["hashes"]["sha256"]) == (entry["wheel"], entry["wheel_sha256"])
    (torch_wheel,) = packages["torch"]["wheels"]
    if lock.name in regenerate.TORCH_CPU_WHEELS:
        name, sha = regenerate.TORCH_CPU_WHEELS[lock.name]
        assert (wheel_name(torch_wheel), torch_wheel["hashes"]["sha256"]) == (name, sha)
        assert torch_wheel["url"].startswith(regenerate.TORCH_CPU_INDEX + "/")
        assert f"--extra-index-url {regenerate.TORCH_CPU_INDEX}" in lock.path.read_text()
    else:
        assert torch_wheel["url"].startswith("https://files.pythonhosted.org/")


def test_old_environments_paths_install_the_same_locks():
    """Venv recipes written before the locks moved (`-r environments/linux-cpu-dev.txt`) still work."""
    for old, new in (("linux-cpu.txt", "linux-64-cpu.txt"), ("linux-cpu-dev.txt", f"{lockfiles.DEV_LOCK}.txt")):
        assert parse_requirements_lock(ROOT / "environments" / old) == parse_requirements_lock(lockfiles.LOCKS_DIR / new)


def build_wheel(tmp: Path) -> tuple[Path, str]:
    """The kit's wheel, built from a fresh git repository holding a copy of its sources: (wheel, commit)."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    src = tmp / "src"
    shutil.copytree(ROOT / "kit", src / "kit", ignore=shutil.ignore_patterns("__pycache__", "_build.json"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        subprocess.run([git, "-C", str(src), *args], check=True, env=env, capture_output=True)
    head = subprocess.run([git, "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "w"),
                    str(src)], check=True, capture_output=True)
    (wheel,) = (tmp / "w").glob("*.whl")
    return wheel, head.strip()


def test_the_wheel_carries_the_locks_and_its_commit(tmp_path: Path):
    """Built from a git checkout, the wheel holds kit/locks/ and kit/_build.json naming that commit."""
    wheel, head = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert json.loads(zf.read("kit/_build.json")) == {"commit": head, "dirty": False}
    for path in lockfiles.LOCKS_DIR.iterdir():
        assert f"kit/locks/{path.name}" in names


# ---- slow: PyPI ---------------------------------------------------------------------------------


def _venv_install(where: Path, lock: Path, wheel: Path, env: dict[str, str]) -> tuple[Path, float]:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    py = where / "bin" / "python"
    started = time.perf_counter()
    done = subprocess.run([str(py), "-m", "pip", "install", "-q", "--require-hashes", "--no-deps", "-r", str(lock)],
                          capture_output=True, text=True, env=env, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    seconds = time.perf_counter() - started
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True,
                   env=env, cwd=where)
    check = subprocess.run([str(py), "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    return py, seconds


def _env_json(py: Path, cwd: Path) -> dict:
    out = subprocess.run([str(py), "-m", "kit", "env", "--json"], capture_output=True, text=True, cwd=cwd, check=True)
    return json.loads(out.stdout)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_one_step_install_twice_gives_one_result_env_and_pytest_does_not_move_it(tmp_path: Path):
    """`pip install --require-hashes --no-deps -r kit/locks/linux-64-cpu.txt` in two clean venvs (one hash-checked
    step each, torch's CPU build included), then the kit from a wheel: `env --json` gives the same result_env
    id in both; installing pytest (hash-checked, from the dev lock) into one does not change it."""
    lock = lockfiles.lock_named("linux-64-cpu")
    if lockfiles.conda_platform() != lock.platform:
        pytest.skip(f"this box is {lockfiles.conda_platform()}, the lock is for {lock.platform}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
    except OSError:
        env["PIP_RETRIES"] = "0"  # PyTorch's index unreachable here: pip's find-links has the +cpu wheel
    wheel, head = build_wheel(tmp_path)
    runs = []
    for name in ("a", "b"):
        py, seconds = _venv_install(tmp_path / name, lock.path, wheel, env=env)
        data = _env_json(py, tmp_path)
        print(f"venv {name}: one-step install of {lock.path.name} took {seconds:.0f} s")  # noqa: T201 - for the note
        assert data["fingerprint"]["host"]["lock"]["name"] == lock.name  # the lock inside the installed package
        assert data["fingerprint"]["result_env"]["kit"]["commit"] == head  # from the wheel's kit/_build.json
        assert data["fingerprint"]["result_env"]["packages"]["torch"]["version"] == lock.torch_pin
        runs.append((py, data))
    assert runs[0][1]["result_env_id"] == runs[1][1]["result_env_id"]
    tools = tmp_path / "pytest.txt"
    dev = DEV_LOCK_PATH.read_text()
    tools.write_text("".join(block for block in re.split(r"(?m)^(?=[a-z])", dev)
                             if block.startswith(("pytest==", "iniconfig==", "pluggy=="))))
    py = runs[0][0]
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--require-hashes", "--no-deps", "-r", str(tools)],
                   check=True, capture_output=True, env=env)
    assert subprocess.run([str(py), "-m", "pytest", "--version"], capture_output=True).returncode == 0
    assert _env_json(py, tmp_path)["result_env_id"] == runs[0][1]["result_env_id"]


def _uv() -> str:
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(uv).is_file():
        pytest.skip("uv is not installed (it is in the dev lock)")
    return uv


@pytest.mark.slow
@pytest.mark.parametrize("lock", lockfiles.LOCKS, ids=LOCK_IDS)
def test_each_lock_resolves_for_its_platform(lock, tmp_path: Path):
    """uv's resolver, for the lock's platform, finds every pinned file on its index. PyTorch's CPU index
    is not reachable from this build machine: there the +cpu torch is left out (its sha256 is checked
    offline against PyTorch's published one)."""
    text = lock.path.read_text()
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
    except OSError:
        text = re.sub(r"(?ms)^torch==\S+\+cpu \\\n(?:    .*\n)*", "", text).replace(
            f"--extra-index-url {regenerate.TORCH_CPU_INDEX}\n", "")
    reqs = tmp_path / "lock.txt"
    reqs.write_text(text)
    env = {**os.environ, **({"MACOSX_DEPLOYMENT_TARGET": lock.macos_target} if lock.macos_target else {})}
    done = subprocess.run([_uv(), "pip", "install", "--dry-run", "--python-platform", lock.uv_platform,
                           "--python-version", "3.11", "--no-deps", "--require-hashes", "--only-binary", ":all:",
                           "--target", str(tmp_path / "t"), "--no-config", "-r", str(reqs)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Would install" in done.stderr


def _pypi_hashes(name: str, version: str) -> dict[str, str]:
    req = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        files = json.load(resp)["files"]
    return {f["filename"]: f["hashes"]["sha256"] for f in files if f"-{version}-" in f["filename"] or
            f"-{version}." in f["filename"]}


@pytest.mark.slow
@pytest.mark.parametrize("lock", lockfiles.LOCKS, ids=LOCK_IDS)
def test_every_hash_is_the_one_the_index_publishes(lock):
    """uv's dry run does not check hashes: each locked wheel's sha256 against PyPI's simple API (torch +cpu
    against PyTorch's published value, checked offline above)."""
    for package in pylock(lock)["packages"]:
        for wheel in package["wheels"]:
            if not wheel["url"].startswith("https://files.pythonhosted.org/"):
                continue
            published = _pypi_hashes(package["name"], package["version"])
            assert published.get(wheel_name(wheel)) == wheel["hashes"]["sha256"], wheel_name(wheel)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", ["osx-arm64", "osx-64"])
def test_pip_downloads_and_hash_checks_the_macos_locks(name, tmp_path: Path):
    """pip itself, for the Mac: every file of the lock downloaded for that platform and hash-checked
    (`pip download --require-hashes --platform ...`); a few hundred MB each."""
    lock = lockfiles.lock_named(name)
    plat = [a for tag in lock.python_platforms for a in ("--platform", tag)]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--require-hashes", "--only-binary",
                           ":all:", "--implementation", "cp", "--python-version", "3.11", *plat, "-d", str(tmp_path),
                           "-r", str(lock.path)], capture_output=True, text=True, timeout=1700)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(tmp_path.glob("*.whl"))) == len(pylock(lock)["packages"])
