"""pixi.toml: valid for the pixi CI uses, environments that can solve and run (lean default, one solve
group, the NVENC driver floor, the pinned ffmpeg, an Intel env that loads its own VA/oneVPL runtime);
the kit hands that runtime to its ffmpeg children only; the conda-lock export installs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from kit.core import proc
from kit.corpus import ffmpeg as ffmpeg_tools
from kit.env import lockfiles, locks, platform

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = tomllib.loads((ROOT / "pixi.toml").read_text())
CI = yaml.safe_load((ROOT / "ci" / "pixi-ci.yml").read_text())
SCHEMAS = sorted((ROOT / "ci" / "pixi-schema").glob("manifest-v*.json"))
FIXTURES = Path(__file__).parent / "fixtures" / "pixi"
# Driver branch -> the CUDA version it reports (__cuda): what pixi's system-requirements can express.
CUDA_OF_DRIVER = {580: "13.0", 590: "13.1", 595: "13.2", 610: "13.3", 615: "13.4"}


def _check_jsonschema() -> str:
    return shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))


def test_ci_pixi_schema_and_requires_pixi_agree():
    """One pixi version: the one CI installs, the schema CI validates against, requires-pixi's floor; and
    below 0.68, which writes a lock (v7) that pixi 0.63 cannot read."""
    versions = {step["with"]["pixi-version"].lstrip("v") for job in CI["jobs"].values() for step in job["steps"]
                if "setup-pixi" in step.get("uses", "")}
    (schema,) = SCHEMAS
    assert versions == {schema.stem.removeprefix("manifest-v")} == {"0.63.2"}
    assert MANIFEST["workspace"]["requires-pixi"] == ">=0.63.2,<0.68"
    assert "ci/pixi-schema/" + schema.name in (ROOT / ".ci" / "run").read_text()
    assert "sha256 " + __import__("hashlib").sha256(schema.read_bytes()).hexdigest() in (schema.parent / "README.md").read_text()


def test_pixi_toml_validates_against_the_vendored_schema(tmp_path: Path):
    (schema,) = SCHEMAS
    ok = subprocess.run([_check_jsonschema(), "--schemafile", str(schema), str(ROOT / "pixi.toml")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "pixi.toml"
    broken.write_text((ROOT / "pixi.toml").read_text().replace("[feature.cuda]", "[feature.cuda]\nno-such-key = 1", 1))
    bad = subprocess.run([_check_jsonschema(), "--schemafile", str(schema), str(broken)], capture_output=True, text=True)
    assert bad.returncode != 0  # the check can fail


def test_the_ci_workflow_is_a_valid_github_workflow():
    """ci/pixi-ci.yml against check-jsonschema's bundled GitHub-workflow schema (it once was not even YAML)."""
    ok = subprocess.run([_check_jsonschema(), "--builtin-schema", "vendor.github-workflows", str(ROOT / "ci" / "pixi-ci.yml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def _features(env: str) -> list[str]:
    spec = MANIFEST["environments"][env]
    return spec["features"] if isinstance(spec, dict) else spec


def _deps(feature: str | None) -> set[str]:
    table = MANIFEST if feature is None else MANIFEST["feature"][feature]
    names = set(table.get("dependencies", {})) | set(table.get("pypi-dependencies", {}))
    for target in table.get("target", {}).values():
        names |= set(target.get("dependencies", {})) | set(target.get("pypi-dependencies", {}))
    return names


def test_environments_lean_default_one_solve_group_and_what_each_box_needs():
    envs = MANIFEST["environments"]
    assert set(envs) == {"default", "test", "intel-media", "osx", "cuda", "lint", "dask"}
    assert set(platform.PIXI_ENVS.values()) <= set(envs)  # the family -> environment table names real ones
    tools = {"pytest", "pytest-timeout", "check-jsonschema", "meson", "ninja", "ruff", "pixi-to-conda-lock"}
    for env in ("default", "intel-media", "osx", "cuda", "dask"):  # user environments carry no test tooling
        assert not tools & set().union(_deps(None), *(_deps(f) for f in _features(env))), env
    assert {env for env, spec in envs.items() if spec.get("solve-group") == "main"} == {"default", "test", "intel-media", "osx",
                                                                                         "dask"}
    assert "dask" not in envs["default"].get("features", [])  # optional: only its own environment and the tests
    assert envs["cuda"]["solve-group"] == "cuda" and envs["lint"]["no-default-feature"] is True
    assert MANIFEST["feature"]["osx"]["platforms"] == ["osx-arm64", "osx-64"]
    assert MANIFEST["dependencies"]["onnxruntime"]["build"] == "*_cpu"


def test_cuda_floor_is_this_ffmpegs_nvenc_driver_floor():
    floor = lockfiles.locked_ffmpeg("linux-64").nvenc_min_driver
    assert MANIFEST["feature"]["cuda"]["system-requirements"]["cuda"] == CUDA_OF_DRIVER[int(floor.split(".")[0])] == "13.3"
    assert MANIFEST["feature"]["cuda"]["platforms"] == ["linux-64"]


def test_one_ffmpeg_everywhere():
    pinned = lockfiles.ffmpeg_data()["imageio_ffmpeg"]
    assert MANIFEST["pypi-dependencies"]["imageio-ffmpeg"] == f"=={pinned}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"imageio-ffmpeg=={pinned}" in project["dependencies"]


def test_intel_env_loads_its_own_runtime():
    feature = MANIFEST["feature"]["intel-media"]
    assert {"libva", "intel-media-driver", "vpl-gpu-rt"} <= set(feature["target"]["linux-64"]["dependencies"])
    env = feature["activation"]["env"]
    assert env == {"EKIT_FFMPEG_LIBRARY_PATH": "$CONDA_PREFIX/lib", "LIBVA_DRIVERS_PATH": "$CONDA_PREFIX/lib/dri",
                   "LIBVA_DRIVER_NAME": "iHD", "ONEVPL_PRIORITY_PATH": "$CONDA_PREFIX/lib"}
    assert ffmpeg_tools.FFMPEG_LIBRARY_PATH_ENV == "EKIT_FFMPEG_LIBRARY_PATH"
    assert "LD_LIBRARY_PATH" not in env  # never for the whole environment (git, nvidia-smi would load conda's libs)


def test_tasks_run_the_kit_and_read_nothing_outside_the_repo():
    tasks = dict(MANIFEST["tasks"])
    for feature in MANIFEST["feature"].values():
        tasks.update(feature.get("tasks", {}))
    for name in ("pipeline", "corpus", "train", "verdict", "bundle", "prereqs"):
        assert MANIFEST["tasks"][name]["cmd"] == f"ensemble-kit {name}"  # pixi appends extra args to the command
    for name, task in tasks.items():
        for word in shlex.split(task["cmd"]):
            assert not word.startswith(("/", "..", "~", "$HOME")) and "/../" not in word, f"task {name}: {word}"
            if "/" in word and not word.startswith("-"):
                assert (ROOT / word).exists() or word.startswith("runs/"), f"task {name} names {word}, not in the repo"


# ---- the Intel runtime reaches ffmpeg, and only ffmpeg -------------------------------------------


def test_ffmpeg_children_get_the_env_library_path_first_and_other_tools_do_not(tmp_path: Path, monkeypatch):
    """The real static ffmpeg, asked to open VA-API: with EKIT_FFMPEG_LIBRARY_PATH set, the dynamic loader
    looks for libva-drm.so.2 in that directory before the system's (LD_DEBUG shows the search); with no
    libva anywhere, its implib stub aborts, and the kit says which library and how to get it."""
    if sys.platform != "linux":
        pytest.skip("LD_LIBRARY_PATH and the VA-API stubs are Linux-only")
    env_lib = tmp_path / "env-lib"
    env_lib.mkdir()
    monkeypatch.setenv(ffmpeg_tools.FFMPEG_LIBRARY_PATH_ENV, str(env_lib))
    monkeypatch.setattr(proc, "_tool_library_path", {})
    ff = ffmpeg_tools.probe_ffmpeg(ffmpeg_tools.find_ffmpeg().path, origin="imageio")  # registers the path
    monkeypatch.setenv("LD_DEBUG", "libs")
    done = proc.run([str(ff.path), "-hide_banner", "-v", "error", "-init_hw_device", "vaapi=va:/dev/null",
                     "-f", "lavfi", "-i", "testsrc2=size=64x48", "-frames:v", "1", "-f", "null", "-"],
                    stage="va probe", check=False, timeout=60)
    tried = re.findall(r"trying file=(\S+/libva-drm\.so\.2)", done.stderr)
    assert tried and tried[0] == f"{env_lib}/libva-drm.so.2", tried[:3]
    if not any(Path(p).exists() for p in tried):  # no libva on this box either: the stub aborts ffmpeg
        assert done.returncode != 0
        assert "libva-drm.so.2 cannot be loaded" in ffmpeg_tools.explain_stderr(done.stderr)
        assert "intel-media" in ffmpeg_tools.explain_stderr(done.stderr)
    other = proc.run([sys.executable, "-c", "import os; print(os.environ.get('LD_LIBRARY_PATH', ''))"], stage="py")
    assert str(env_lib) not in other.stdout  # python, git, nvidia-smi: the host's libraries


# ---- the conda-lock export -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_conda_lock_parses_the_export_and_pip_installs_its_self_entry(tmp_path: Path):
    """conda-lock's own parser (4.0.3, from PyPI into a scratch venv) reads our export of the fixture
    pixi.lock; the pip lines it renders for `conda-lock install` include `ensemble-kit @ file:.`, which pip
    resolves to this checkout (a dry run from the repository root)."""
    pytest.importorskip("pixi_to_conda_lock")
    out = tmp_path / "export"
    locks.export_conda_locks(FIXTURES / "pixi.lock", out, ["default"])
    venv = tmp_path / "cl"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    got = subprocess.run([str(py), "-m", "pip", "install", "-q", "conda-lock==4.0.3"], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"conda-lock could not be installed here: {got.stderr.strip().splitlines()[-1:]}")
    script = (
        "import json, pathlib, sys\n"
        "from conda_lock.lockfile import parse_conda_lock_file\n"
        "from conda_lock.conda_lock import render_lockfile_for_platform\n"
        "lf = parse_conda_lock_file(pathlib.Path(sys.argv[1]))\n"
        "out = {k: render_lockfile_for_platform(lockfile=lf, include_dev_dependencies=True, extras=set(), kind=k,\n"
        "       platform='linux-64', suppress_warning_for_pip_and_explicit=True) for k in ('env', 'explicit')}\n"
        "print(json.dumps({'n': len(lf.package), **out}))\n")
    done = subprocess.run([str(py), "-c", script, str(out / "default.conda-lock.yml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rendered = json.loads(done.stdout)
    assert rendered["n"] == 14  # 7 records x 2 platforms: conda, imageio-ffmpeg and the project itself
    env_lines = [line.strip().removeprefix("- ") for line in rendered["env"] if "ensemble-kit" in line]
    explicit = [line.removeprefix("# pip ").strip() for line in rendered["explicit"] if "ensemble-kit" in line]
    assert env_lines == explicit == ["ensemble-kit @ file:."]
    reqs = tmp_path / "self.txt"
    reqs.write_text(env_lines[0] + "\n")
    dry = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-build-isolation",
                          "-r", str(reqs)], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PIP_NO_INDEX": "1"})
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert dry.returncode == 0 and "Would install ensemble-kit" in dry.stdout, dry.stderr[-2000:]
