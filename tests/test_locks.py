"""Locks: pixi.lock drift with fixture conda-meta records (tests/fixtures/pixi: real v6 records, trimmed),
the pip lock drift of this very environment, and conda-lock export of the fixture pixi.lock."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kit import __version__
from kit.core.errors import BadInput, PrereqError
from kit.env import locks
from kit.env.lockfiles import LOCKS_DIR, conda_platform, locks_for

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "pixi"
SCHEMA = ROOT.parent / "shared" / "pixi" / "manifest-schema.json"


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """A writable copy of the fixture pixi environment (default env, linux-64)."""
    dest = tmp_path / "env"
    shutil.copytree(FIXTURES / "prefix", dest)
    return dest


def _meta(prefix: Path, name: str) -> Path:
    (path,) = (prefix / "conda-meta").glob(f"{name}-*.json")
    return path


# ---- pixi environments: drift against a fixture pixi.lock -------------------------------------


def test_fixture_env_matches_its_lock(prefix: Path):
    report = locks.pixi_drift(prefix, FIXTURES / "pixi.lock", "default", "linux-64")
    assert report.kind == "pixi" and report.name == "default"
    assert report.differences == () and report.in_sync
    assert "matches pixi lock 'default'" in report.summary()


def test_drift_names_every_difference(prefix: Path):
    rec = json.loads(_meta(prefix, "python").read_text())
    rec["version"], rec["build"] = "3.13.10", "h123_0_cp313"
    _meta(prefix, "python").write_text(json.dumps(rec))
    rec = json.loads(_meta(prefix, "libzlib").read_text())
    rec["sha256"] = "0" * 64
    _meta(prefix, "libzlib").write_text(json.dumps(rec))
    _meta(prefix, "pip").unlink()
    (prefix / "conda-meta" / "ffmpeg-7.1-h1.json").write_text(
        json.dumps({"name": "ffmpeg", "version": "7.1", "build": "h1", "sha256": None}))
    dist = prefix / "lib/python3.13/site-packages/imageio_ffmpeg-0.8.1.dist-info/METADATA"
    dist.write_text("Metadata-Version: 2.1\nName: imageio-ffmpeg\nVersion: 0.7.0\n")

    report = locks.pixi_drift(prefix, FIXTURES / "pixi.lock", "default", "linux-64")
    by_name = {d.name: d for d in report.differences}
    assert {n: d.kind for n, d in by_name.items()} == {
        "python": "version", "libzlib": "sha256", "pip": "missing", "ffmpeg": "extra", "imageio-ffmpeg": "version"}
    assert str(by_name["python"]) == "python: locked 3.13.9 (hc97d973_101_cp313), installed 3.13.10 (h123_0_cp313)"
    assert not report.in_sync and "5 difference(s)" in report.summary()


def test_another_environments_lock_names_what_it_lacks(prefix: Path):
    """The default install against the `lint` environment (no pip, no pytorch) of the same lock."""
    report = locks.pixi_drift(prefix, FIXTURES / "pixi.lock", "lint", "linux-64")
    assert {(d.name, d.kind) for d in report.differences} == {("pip", "extra"), ("pytorch", "extra")}


def test_check_drift_uses_pixi_variables(prefix: Path, tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(FIXTURES / "pixi.lock", project / "pixi.lock")
    environ = {"PIXI_ENVIRONMENT_NAME": "default", "CONDA_PREFIX": str(prefix), "PIXI_PROJECT_ROOT": str(project)}
    if conda_platform() != "linux-64":
        pytest.skip("the fixture lock's default environment is locked for linux-64 and osx-arm64 only")
    assert locks.check_drift(environ).in_sync


@pytest.mark.parametrize(
    ("env", "platform", "match"),
    [("gpu", "linux-64", "no environment 'gpu'"), ("lint", "osx-arm64", "not locked for osx-arm64")],
)
def test_bad_environment_or_platform_is_bad_input(prefix: Path, env, platform, match):
    with pytest.raises(BadInput, match=match):
        locks.pixi_drift(prefix, FIXTURES / "pixi.lock", env, platform)


def test_missing_lock_and_non_conda_prefix(tmp_path: Path, prefix: Path):
    with pytest.raises(BadInput, match="pixi lock"):
        locks.pixi_drift(prefix, tmp_path / "pixi.lock", "default", "linux-64")
    with pytest.raises(PrereqError, match="conda-meta"):
        locks.read_conda_meta(tmp_path)


@pytest.mark.parametrize(("system", "machine", "subdir"), [
    ("linux", "x86_64", "linux-64"), ("linux", "aarch64", "linux-aarch64"),
    ("darwin", "arm64", "osx-arm64"), ("darwin", "x86_64", "osx-64")])
def test_conda_platform(system, machine, subdir):
    assert conda_platform(system, machine) == subdir


# ---- pip environments ------------------------------------------------------------------------


def test_requirements_lock_parsing(tmp_path: Path):
    lock = tmp_path / "x.txt"
    lock.write_text(
        "click==8.1.7 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via ensemble-kit\n"
        "PyYAML==6.0.2 \\\n    --hash=sha256:cc\n"
        "pywin32==306 ; sys_platform == 'win32' \\\n    --hash=sha256:dd\n# torch\n")
    assert locks.parse_requirements_lock(lock) == {"click": "8.1.7", "pyyaml": "6.0.2"}
    lock.write_text("click>=8\n")
    with pytest.raises(BadInput, match="not pinned"):
        locks.parse_requirements_lock(lock)


def test_pip_drift_reports_by_name_and_picks_the_lock_that_fits(tmp_path: Path):
    common = "numpy==2.1.0 \\\n    --hash=sha256:aa\nclick==8.1.7 \\\n    --hash=sha256:bb\n"
    (tmp_path / "x-cpu.txt").write_text(common + "torch==2.13.0+cpu \\\n    --hash=sha256:cc\n")
    (tmp_path / "x-cuda.txt").write_text(common + "torch==2.13.0 \\\n    --hash=sha256:dd\n")
    installed = {"numpy": "2.1.0", "torch": "2.13.0+cpu", "rich": "13.0", "pip": "25"}
    report = locks.pip_drift(tmp_path, names=["x-cuda", "x-cpu"], installed=installed)
    assert report.name == "x-cpu" and [str(d) for d in report.differences] == ["click: locked 8.1.7, not installed"]
    assert report.extras == ("rich",)
    installed.update(click="8.1.8", torch="2.13.0")
    report = locks.pip_drift(tmp_path, names=["x-cpu", "x-cuda"], installed=installed)
    assert report.name == "x-cuda" and [(d.name, d.kind) for d in report.differences] == [("click", "version")]


def test_this_environment_against_the_committed_lock():
    """The real check on this interpreter: runs, names an in-package lock, and every difference names a package."""
    if not locks_for():
        pytest.skip(f"no pip lock for {conda_platform()}")
    report = locks.pip_drift()
    assert report.kind == "pip" and report.lock_path is not None and report.lock_path.is_file()
    assert report.lock_path.parent == LOCKS_DIR and len(report.lock_sha256 or "") == 64
    assert all(d.name and d.kind in ("missing", "version") for d in report.differences)


def test_lock_includes_are_followed(tmp_path: Path):
    (tmp_path / "base.txt").write_text("numpy==2.1.0 \\\n    --hash=sha256:aa\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "dev.txt").write_text("-r ../base.txt\npytest==8.0 \\\n    --hash=sha256:bb\n")
    assert locks.parse_requirements_lock(tmp_path / "sub" / "dev.txt") == {"numpy": "2.1.0", "pytest": "8.0"}
    (tmp_path / "base.txt").write_text("-r sub/dev.txt\n")
    with pytest.raises(BadInput, match="includes itself"):
        locks.parse_requirements_lock(tmp_path / "base.txt")


# ---- conda-lock export -----------------------------------------------------------------------


def test_export_writes_one_conda_lock_per_environment(tmp_path: Path):
    yaml = pytest.importorskip("yaml")
    written = locks.export_conda_locks(FIXTURES / "pixi.lock", tmp_path)
    assert [p.name for p in written] == ["default.conda-lock.yml", "lint.conda-lock.yml"]
    data = yaml.safe_load((tmp_path / "default.conda-lock.yml").read_text())
    assert data["metadata"]["platforms"] == ["linux-64", "osx-arm64"]
    by_key = {(p["name"], p["platform"]): p for p in data["package"]}
    torch = by_key[("pytorch", "linux-64")]
    assert torch["manager"] == "conda" and torch["hash"]["sha256"].startswith("0672391e")
    assert by_key[("imageio-ffmpeg", "osx-arm64")]["manager"] == "pip"
    # the project's own `pypi: ./` entry: a source pip installs (`ensemble-kit @ file:.`), not `== <dynamic>`
    me = by_key[("ensemble-kit", "linux-64")]
    assert (me["version"], me["url"], me["source"]) == (__version__, "file:.", {"type": "url", "url": "file:."})
    from packaging.requirements import Requirement

    assert Requirement(f"ensemble-kit @ {me['source']['url']}").url == "file:."
    first = (tmp_path / "default.conda-lock.yml").read_bytes()
    locks.export_conda_locks(FIXTURES / "pixi.lock", tmp_path, ["default"])
    assert (tmp_path / "default.conda-lock.yml").read_bytes() == first  # same lock, same bytes
    with pytest.raises(BadInput, match="not in"):
        locks.export_conda_locks(FIXTURES / "pixi.lock", tmp_path, ["rocm"])


# ---- the CLI door ----------------------------------------------------------------------------


def test_cli_env_check_names_drift_and_exits_3(prefix: Path, tmp_path: Path, monkeypatch):
    from click.testing import CliRunner

    from kit.cli import main

    if conda_platform() != "linux-64":
        pytest.skip("the fixture lock's default environment is locked for linux-64 and osx-arm64 only")
    _meta(prefix, "pip").unlink()
    monkeypatch.setenv("PIXI_ENVIRONMENT_NAME", "default")
    monkeypatch.setenv("CONDA_PREFIX", str(prefix))
    monkeypatch.setenv("PIXI_PROJECT_ROOT", str(FIXTURES))
    result = CliRunner().invoke(main, ["env", "check"])
    assert result.exit_code == 3, result.output
    assert "pip: locked 23.2.1 (pyhd8ed1ab_0), not installed" in result.stdout
    assert "pixi install --locked" in result.output
    data = json.loads(CliRunner().invoke(main, ["env", "check", "--json"]).stdout)
    assert data["kind"] == "pixi" and [d["name"] for d in data["differences"]] == ["pip"]


def test_cli_env_json_and_export(tmp_path: Path):
    from click.testing import CliRunner

    from kit.cli import main
    from kit.env import fingerprint as environment

    result = CliRunner().invoke(main, ["env", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["fingerprint_id"] == environment.fingerprint_id(data["fingerprint"])
    result = CliRunner().invoke(main, ["env", "export", "--lock", str(FIXTURES / "pixi.lock"),
                                       "--out-dir", str(tmp_path), "-e", "lint"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["lint.conda-lock.yml"]
    missing = CliRunner().invoke(main, ["env", "export", "--lock", str(tmp_path / "pixi.lock")])
    assert missing.exit_code == 2 and "pixi lock" in missing.output
