"""The distribution tarball: self-contained, reproducible, small, and it installs and runs from an empty folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core.archive import safe_extract
from kit.core.errors import BadInput
from kit.env import dist, lockfiles

STEM = "ensemble-kit-" + __import__("kit").__version__


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dist.DistResult:
    return dist.make_dist(tmp_path_factory.mktemp("dist") / "ek.tar.gz")


def test_dist_contents_are_self_contained(built):
    with tarfile.open(built.path) as tf:
        members = {m.name.removeprefix(STEM + "/"): m for m in tf.getmembers()}
    names = set(members)
    root = dist.source_root()
    # every module of the package, the build file, the pixi manifest, the README and the bootstrap
    for py in (root / "kit").rglob("*.py"):
        assert py.relative_to(root).as_posix() in names, py
    assert {"pyproject.toml", "setup.py", "README.md", "run", "DIST.json", "kit/_build.json"} <= names
    for lock in lockfiles.LOCKS:  # the pip locks travel inside the package
        assert f"kit/locks/{lock.name}.txt" in names and f"kit/locks/pylock.{lock.name}.toml" in names
    for optional in ("pixi.toml", "pixi.lock"):
        assert ((root / optional).is_file()) == (optional in names)
    for env_file in (root / "environments").glob("*") if (root / "environments").is_dir() else []:
        if env_file.is_file() and not env_file.name.startswith("."):
            assert f"environments/{env_file.name}" in names
    # nothing generated or private
    assert {"tests/conftest.py", "bench/kill_resume.py"} <= names  # `pixi run test` works from the tarball
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or n.startswith(("runs/", "dist/", ".venv"))]
    assert members["run"].mode == 0o755
    assert built.size < 50 << 20


def test_dist_is_reproducible(built, tmp_path):
    again = dist.make_dist(tmp_path / "again.tar.gz")
    assert again.sha256 == built.sha256


def test_run_script_is_valid_bash_and_installs_the_platform_lock_in_one_step():
    text = dist.render_run_script()
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    for platform in ("linux-64", "linux-aarch64", "osx-arm64", "osx-64"):
        assert f"lock={lockfiles.locks_for(platform)[0].name} ;;" in text
    assert '--require-hashes --no-deps -r "$here/kit/locks/$lock.txt"' in text and "--no-build-isolation" in text
    assert "torch==" not in text  # torch comes from the lock, hash-checked, never by name
    assert "pixi run" in text and "python3" in text


def test_with_wheels_unknown_platform_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="--with-wheels 'windows-64': no such lock"):
        dist.make_dist(tmp_path / "x.tar.gz", with_wheels="windows-64")
    r = CliRunner().invoke(main, ["dist", "--out", str(tmp_path / "x.tar.gz"), "--with-wheels", "windows-64"])
    assert r.exit_code == 2 and "Traceback" not in r.output and "linux-64-cpu" in r.output


def _borrowing_venv(venv: Path) -> None:
    """A venv without pip whose site-packages sees this test venv's packages (torch & co. are not
    downloaded again); the kit itself is then installed into it from the unpacked tarball by ./run."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_paths()["purelib"])
    (venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "_borrow.pth").write_text(
        f"{purelib}\n")


def test_unpack_install_and_run_from_an_empty_folder(built, tmp_path, tiny_pipeline_args):
    unpacked = tmp_path / "empty"
    unpacked.mkdir()
    safe_extract(built.path, unpacked)
    home = unpacked / STEM
    venv = tmp_path / "venv"
    _borrowing_venv(venv)
    env = {**os.environ, "EKIT_NO_PIXI": "1", "EKIT_VENV": str(venv), "PIP_NO_INDEX": "1",
           "PIP_NO_BUILD_ISOLATION": "0"}
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    r = subprocess.run([str(home / "run"), "--version"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ensemble-kit, version")  # pip's chatter went to stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import kit; print(kit.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(home), where  # the unpacked copy (its home), not this checkout
    locks_dir = subprocess.run([str(venv / "bin" / "python"), "-c", "from kit.env import lockfiles; print(lockfiles.LOCKS_DIR)"],
                               cwd=elsewhere, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(locks_dir) == home / "kit" / "locks"  # the drift check finds the tarball's locks
    # second call: no reinstall; the installed kit runs the (tiny) demo pipeline from an unrelated folder
    r2 = subprocess.run([str(home / "run"), "verify", str(tmp_path / "missing.tar.gz")], cwd=elsewhere, env=env,
                        capture_output=True, text=True, timeout=120)
    assert "installing" not in r2.stderr
    assert r2.returncode == 2 and "bundle not found" in r2.stderr
    demo = subprocess.run([str(home / "run"), "pipeline", *tiny_pipeline_args, "--out-dir", "runs/demo"], cwd=elsewhere,
                          env=env, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr[-3000:]
    verdict, bundle_path = demo.stdout.split()
    assert verdict == "PROMOTE" and (elsewhere / bundle_path).is_file()
    assert subprocess.run([str(home / "run"), "verify", bundle_path], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120).returncode == 0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_clean_install_from_the_lock_runs_the_demo(built, tmp_path):
    """No borrowed packages: ./run builds its own venv from kit/locks/ in one hash-checked step (torch's CPU
    build included), from whatever index pip is configured for, then runs the full demo pipeline."""
    unpacked = tmp_path / "empty"
    safe_extract(built.path, unpacked)
    home = unpacked / STEM
    if lockfiles.conda_platform() != "linux-64":
        pytest.skip("the default lock this test installs is linux-64-cpu")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "EKIT_"))}
    env.update(EKIT_NO_PIXI="1")
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
    except OSError:
        env["PIP_RETRIES"] = "0"  # PyTorch's index unreachable here: pip's own find-links has the +cpu wheel
    r = subprocess.run([str(home / "run")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1700)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.startswith("PROMOTE ")


def test_run_script_hands_over_to_pixi_when_present(tmp_path):
    """pixi itself cannot run here (no conda-forge); a stand-in on PATH records what ./run would execute."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "run").write_text(dist.render_run_script())
    (home / "run").chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pixi").write_text('#!/bin/sh\necho "$@"\n')
    (bin_dir / "pixi").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "EKIT_PIXI_ENV": "cuda"}
    env.pop("EKIT_NO_PIXI", None)
    r = subprocess.run([str(home / "run")], env=env, capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["run", "--manifest-path", str(home / "pixi.toml"), "-e", "cuda", "ensemble-kit", "pipeline"]
    (home / "pixi.lock").write_text("")
    r = subprocess.run([str(home / "run"), "verify", "x.tar.gz"], env=env, capture_output=True, text=True, check=True)
    assert "--locked" in r.stdout.split() and r.stdout.split()[-2:] == ["verify", "x.tar.gz"]
