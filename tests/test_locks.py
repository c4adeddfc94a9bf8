"""Locks: pixi.toml against pixi's schema, pixi.lock drift with fixture conda-meta records, the pip lock
drift of this very environment, and conda-lock export of a fixture pixi.lock."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kit.core.errors import BadInput, PrereqError
from kit.env import locks
from kit.env.lockfiles import conda_platform

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


# ---- pixi.toml ------------------------------------------------------------------------------


def test_pixi_toml_validates_against_pixis_schema(tmp_path: Path):
    if not SCHEMA.is_file():
        pytest.skip("../shared/pixi/manifest-schema.json is absent (a user's clone)")
    check = shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))
    ok = subprocess.run([check, "--schemafile", str(SCHEMA), str(ROOT / "pixi.toml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "pixi.toml"
    broken.write_text((ROOT / "pixi.toml").read_text().replace("[feature.cuda]", "[feature.cuda]\nno-such-key = 1", 1))
    bad = subprocess.run([check, "--schemafile", str(SCHEMA), str(broken)], capture_output=True, text=True)
    assert bad.returncode != 0  # the check can fail


def test_pixi_toml_has_the_environments_and_tasks_users_run():
    manifest = tomllib.loads((ROOT / "pixi.toml").read_text())
    assert set(manifest["workspace"]["platforms"]) == {"linux-64", "osx-arm64", "osx-64"}
    assert {"default", "cuda", "sycl", "osx", "test", "lint"} <= set(manifest["environments"])
    tasks = set(manifest["tasks"]) | set(manifest["feature"]["test"]["tasks"]) | set(manifest["feature"]["lint"]["tasks"])
    assert {"pipeline", "corpus", "train", "verdict", "bundle", "prereqs", "test", "lint"} <= tasks
    for name in ("pipeline", "corpus", "train", "verdict", "bundle", "prereqs"):
        # pixi appends extra args to the command, so each task must be the bare subcommand
        assert manifest["tasks"][name]["cmd"] == f"ensemble-kit {name}"
    assert "imageio-ffmpeg" in manifest["pypi-dependencies"]
    assert manifest["feature"]["cuda"]["system-requirements"]["cuda"]
    sycl_env = manifest["feature"]["sycl"]["activation"]["env"]
    assert sycl_env["LIBVA_DRIVERS_PATH"].startswith("$CONDA_PREFIX") and sycl_env["LIBVA_DRIVER_NAME"] == "iHD"


# ---- pixi environments: drift against a fixture pixi.lock -------------------------------------


def test_fixture_env_matches_its_lock(prefix: Path):
    report = locks.pixi_drift(prefix, FIXTURES / "pixi.lock", "default", "linux-64")
    assert report.kind == "pixi" and report.name == "default"
    assert report.differences == () and report.in_sync
    assert "matches pixi lock 'default'" in report.summary()


def test_drift_names_every_difference(prefix: Path):
    rec = json.loads(_meta(prefix, "python").read_text())
    rec["version"], rec["build"] = "3.11.12", "h123_0_cpython"
    _meta(prefix, "python").write_text(json.dumps(rec))
    rec = json.loads(_meta(prefix, "libzlib").read_text())
    rec["sha256"] = "0" * 64
    _meta(prefix, "libzlib").write_text(json.dumps(rec))
    _meta(prefix, "pip").unlink()
    (prefix / "conda-meta" / "ffmpeg-7.1-h1.json").write_text(
        json.dumps({"name": "ffmpeg", "version": "7.1", "build": "h1", "sha256": None}))
    dist = prefix / "lib/python3.11/site-packages/imageio_ffmpeg-0.6.0.dist-info/METADATA"
    dist.write_text("Metadata-Version: 2.1\nName: imageio-ffmpeg\nVersion: 0.5.1\n")

    report = locks.pixi_drift(prefix, FIXTURES / "pixi.lock", "default", "linux-64")
    by_name = {d.name: d for d in report.differences}
    assert {n: d.kind for n, d in by_name.items()} == {
        "python": "version", "libzlib": "sha256", "pip": "missing", "ffmpeg": "extra", "imageio-ffmpeg": "version"}
    assert str(by_name["python"]) == "python: locked 3.11.11 (h9e4cc4f_1_cpython), installed 3.11.12 (h123_0_cpython)"
    assert not report.in_sync and "5 difference(s)" in report.summary()


def test_cuda_env_on_a_cpu_install_is_a_build_difference(prefix: Path):
    report = locks.pixi_drift(prefix, FIXTURES / "pixi.lock", "cuda", "linux-64")
    (diff,) = report.differences
    assert (diff.name, diff.kind) == ("pytorch", "build")


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
    [("gpu", "linux-64", "no environment 'gpu'"), ("cuda", "osx-arm64", "not locked for osx-arm64")],
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


def test_pip_drift_reports_by_name(tmp_path: Path):
    (tmp_path / "linux-cpu.txt").write_text("numpy==2.1.0 \\\n    --hash=sha256:aa\nclick==8.1.7 \\\n    --hash=sha256:bb\n")
    (tmp_path / "torch-cpu.txt").write_text("torch==2.13.0+cpu\n")
    installed = {"numpy": "2.1.0", "torch": "2.13.0+cpu", "rich": "13.0", "pip": "25"}
    report = locks.pip_drift(tmp_path, names=["linux-cpu"], installed=installed)
    assert [str(d) for d in report.differences] == ["click: locked 8.1.7, not installed"]
    assert report.extras == ("rich",)
    installed["click"] = "8.1.8"
    report = locks.pip_drift(tmp_path, names=["linux-cpu"], installed=installed)
    assert [(d.name, d.kind) for d in report.differences] == [("click", "version")]


def test_this_environment_against_the_committed_lock():
    """The real check on this interpreter: runs, names a lock, and every difference names a package."""
    if locks.pip_platform_key() not in locks.PIP_LOCKS:
        pytest.skip(f"no pip lock for {locks.pip_platform_key()}")
    report = locks.pip_drift()
    assert report.kind == "pip" and report.lock_path is not None and report.lock_path.is_file()
    assert len(report.lock_sha256 or "") == 64
    assert all(d.name and d.kind in ("missing", "version") for d in report.differences)


# ---- conda-lock export -----------------------------------------------------------------------


def test_export_writes_one_conda_lock_per_environment(tmp_path: Path):
    yaml = pytest.importorskip("yaml")
    written = locks.export_conda_locks(FIXTURES / "pixi.lock", tmp_path)
    assert [p.name for p in written] == ["cuda.conda-lock.yml", "default.conda-lock.yml"]
    data = yaml.safe_load((tmp_path / "default.conda-lock.yml").read_text())
    assert data["metadata"]["platforms"] == ["linux-64", "osx-arm64"]
    by_key = {(p["name"], p["platform"]): p for p in data["package"]}
    torch = by_key[("pytorch", "linux-64")]
    assert torch["manager"] == "conda" and torch["hash"]["sha256"].startswith("0d1b7a8e")
    assert by_key[("imageio-ffmpeg", "osx-arm64")]["manager"] == "pip"
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
    assert "pip: locked 25.0.1 (pyh8b19718_0), not installed" in result.stdout
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
                                       "--out-dir", str(tmp_path), "-e", "cuda"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["cuda.conda-lock.yml"]
    missing = CliRunner().invoke(main, ["env", "export", "--lock", str(tmp_path / "pixi.lock")])
    assert missing.exit_code == 2 and "pixi lock" in missing.output


def test_committed_pip_locks_satisfy_pyproject():
    """Every dependency pyproject.toml declares is pinned in the lock at a version inside its range
    (a dependency added without `bash environments/regenerate.sh` fails here, by name)."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_pin = locks.parse_requirements_lock(ROOT / "environments" / locks.TORCH_PIN_FILE)
    extras = project["optional-dependencies"]
    for lock_name, wanted in (("linux-cpu", project["dependencies"]),
                              ("linux-cpu-dev", project["dependencies"] + extras["test"] + extras["dev"])):
        pins = locks.parse_requirements_lock(ROOT / "environments" / f"{lock_name}.txt") | torch_pin
        for text in wanted:
            req = Requirement(text)
            name = locks.canonical_name(req.name)
            if name == "ensemble-kit":
                continue
            assert name in pins, f"{name} is not in environments/{lock_name}.txt: run bash environments/regenerate.sh"
            assert req.specifier.contains(pins[name], prereleases=True), \
                f"{name}=={pins[name]} in environments/{lock_name}.txt is outside {req.specifier}: regenerate the lock"
