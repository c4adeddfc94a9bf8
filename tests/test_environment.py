"""The environment fingerprint: result_env (compared) vs host (recorded), what moves the id and what must not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from kit.core.errors import PrereqError
from kit.core.fsio import canonical_json
from kit.env import fingerprint as environment
from kit.env import lockfiles, platform
from kit.env.platform import GPU, HostPlatform
from kit.results.thresholds import GATE_DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
GPU_A = GPU("nvidia", "NVIDIA GeForce RTX 4090", "610.43.02", 24564, memory_free_mib=20000)
HOST = HostPlatform("linux-cuda", "x86_64", (GPU_A,))
LOCK = {"kind": "pip", "name": "linux-64-cuda", "sha256": "ab" * 32, "in_sync": True}


@pytest.fixture(scope="module")
def ff():
    from kit.corpus import ffmpeg

    return ffmpeg.find_ffmpeg()


def fp(ff, **kw):
    return environment.fingerprint(ff, **({"host": HOST, "lock": LOCK} | kw))


def test_two_parts_and_what_each_holds(ff, monkeypatch):
    monkeypatch.setenv(environment.IMAGE_DIGEST_ENV, "sha256:" + "e" * 64)
    got = fp(ff)
    assert set(got) == {"fingerprint_version", "result_env", "host"}
    res, host = got["result_env"], got["host"]
    assert set(res["packages"]) == set(environment.RESULT_DISTRIBUTIONS) >= {"torch", "numpy", "scipy", "imageio-ffmpeg"}
    assert all(len(p["digest"]) == 64 for p in res["packages"].values())
    assert res["ffmpeg"]["sha256"] == lockfiles.binary_sha256(ff.path) and res["libvmaf"]["version"]
    assert res["gate_defaults"] == GATE_DEFAULTS
    assert res["kit"]["version"] and len(res["kit"]["source_sha256"]) == 64
    assert res["torch_build"]["version"] == metadata.version("torch")
    assert host["gpus"] == [GPU_A.identity()] and host["lock"] == LOCK
    assert host["image_digest"] == "sha256:" + "e" * 64 and host["cpu_model"]
    assert not set(res) & {"os", "cpu_model", "gpus", "lock", "image_digest"}  # host facts stay out of the id
    json.loads(canonical_json(got))


def test_host_facts_never_move_the_id(ff, monkeypatch):
    """Another GPU, driver, CPU flags, lock file, installer or container image: the same result_env id."""
    base_fp = fp(ff)
    base = environment.fingerprint_id(base_fp)
    other = HostPlatform("linux-cpu", "x86_64", (GPU("nvidia", "NVIDIA L4", "590.48.01", 23034, 100),))
    monkeypatch.setenv(environment.IMAGE_DIGEST_ENV, "sha256:" + "1" * 64)
    moved = fp(ff, host=other, lock={**LOCK, "name": "linux-64-cpu-dev", "sha256": "00" * 32, "in_sync": False})
    assert moved["host"] != base_fp["host"]
    assert environment.fingerprint_id(moved) == base
    assert len(base) == 16


def test_what_changes_results_changes_the_id(ff, monkeypatch):
    base = fp(ff)
    base_id = environment.fingerprint_id(base)
    res = base["result_env"]
    variants = {
        "model": fp(ff, vmaf_model="vmaf_v0.6.1neg"),
        "numpy bytes": {"result_env": {**res, "packages": {**res["packages"], "numpy": {**res["packages"]["numpy"],
                                                                                         "digest": "0" * 64}}}},
        "ffmpeg bytes": {"result_env": {**res, "ffmpeg": {**res["ffmpeg"], "sha256": "1" * 64}}},
        "kit commit": {"result_env": {**res, "kit": {**res["kit"], "commit": "f" * 40}}},
    }
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    variants["cpu capability pinned"] = fp(ff)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.setitem(environment.GATE_DEFAULTS, "mean_plcc", 0.9)
    variants["gate defaults"] = fp(ff)
    for what, changed in variants.items():
        assert environment.fingerprint_id(changed) != base_id, what


def test_swapping_the_ffmpeg_binary_moves_the_id_and_adding_a_tool_does_not(tmp_path: Path, ff):
    """The issue's two checks, through the CLI in fresh processes: `env --json` with an extra distribution
    on sys.path (what `pip install pytest` adds) keeps the id; another ffmpeg binary (one byte appended) moves it."""
    site = tmp_path / "site"
    (site / "zz_extra_tool-1.0.dist-info").mkdir(parents=True)
    (site / "zz_extra_tool-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: zz-extra-tool\nVersion: 1.0\n")
    (site / "zz_extra_tool.py").write_text("")
    swapped = tmp_path / "ffmpeg"
    shutil.copyfile(ff.path, swapped)
    with swapped.open("ab") as f:
        f.write(b"\0")
    swapped.chmod(0o755)

    def env_id(*args: str, extra_path: str = "") -> tuple[str, dict]:
        env = {**os.environ, "PYTHONPATH": extra_path}
        out = subprocess.run([sys.executable, "-m", "kit", "env", "--json", *args], capture_output=True, text=True,
                             env=env, check=True, cwd=ROOT).stdout
        data = json.loads(out)
        return data["result_env_id"], data["fingerprint"]

    plain, plain_fp = env_id("--ffmpeg", str(ff.path))
    with_tool, tool_fp = env_id("--ffmpeg", str(ff.path), extra_path=str(site))
    seen = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(m.version('zz-extra-tool'))"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(site)})
    assert seen.stdout.strip() == "1.0"  # the extra distribution really was installed for that process
    assert with_tool == plain and plain_fp["result_env"] == tool_fp["result_env"]
    other, other_fp = env_id("--ffmpeg", str(swapped))
    assert other != plain
    assert [k for k, _, _ in environment.differences(plain_fp["result_env"], other_fp["result_env"])] == ["ffmpeg.sha256"]


def test_record_digest_ignores_what_installers_add(tmp_path: Path):
    """pip and uv write INSTALLER/REQUESTED/direct_url.json and scripts with the venv's own shebang;
    the digest covers only the wheel's files."""
    def dist(extra_rows: str) -> metadata.Distribution:
        info = tmp_path / f"d{len(extra_rows)}" / "demo-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
        (info / "RECORD").write_text("demo/__init__.py,sha256=abc,10\ndemo-1.0.dist-info/METADATA,sha256=def,50\n"
                                     + extra_rows + "demo-1.0.dist-info/RECORD,,\n")
        return metadata.PathDistribution(info)

    plain = environment.record_digest(dist(""))
    installed = environment.record_digest(dist(
        "demo-1.0.dist-info/INSTALLER,sha256=x,4\ndemo-1.0.dist-info/REQUESTED,sha256=y,0\n"
        "demo-1.0.dist-info/direct_url.json,sha256=z,60\n../../../bin/demo,sha256=w,200\n"
        "demo/__pycache__/__init__.cpython-311.pyc,,\n"))
    assert plain == installed and len(plain) == 64
    assert environment.record_digest(dist("demo/data.bin,sha256=new,3\n")) != plain


def test_the_locked_ffmpeg_passes_a_damaged_one_is_refused_any_other_warns(tmp_path: Path, ff, capsys):
    here = lockfiles.locked_ffmpeg()
    if here is None or lockfiles.binary_sha256(ff.path) != here.sha256:
        pytest.skip(f"this box's ffmpeg is not the locked imageio-ffmpeg build for {lockfiles.conda_platform()}")
    assert environment.require_locked_ffmpeg(ff).status == lockfiles.LOCKED
    damaged = tmp_path / Path(here.binary).name
    damaged.write_bytes(b"not the locked bytes")
    check = lockfiles.check_ffmpeg(damaged, "imageio", imageio_version=here.imageio_ffmpeg)
    assert check.status == lockfiles.TAMPERED and here.sha256[:12] in check.detail
    from dataclasses import replace

    with pytest.raises(PrereqError, match="not the locked") as exc:
        environment.require_locked_ffmpeg(replace(ff, path=damaged))
    assert exc.value.exit_code == 3 and "--require-hashes" in (exc.value.hint or "")
    other = lockfiles.check_ffmpeg(damaged, "path")
    assert other.status == lockfiles.UNLOCKED and "another result_env" in other.detail
    environment.require_locked_ffmpeg(replace(ff, path=damaged, origin="path"))
    environment.require_locked_ffmpeg(replace(ff, path=damaged, origin="path"))
    assert capsys.readouterr().err.count("is not the locked ffmpeg") == 1  # warned once per binary


def test_ffmpeg_lock_data_covers_every_locked_platform():
    data = lockfiles.ffmpeg_data()
    for lock in lockfiles.LOCKS:
        entry = lockfiles.locked_ffmpeg(lock.platform)
        assert entry is not None and entry.imageio_ffmpeg == data["imageio_ffmpeg"] and len(entry.sha256) == 64
    assert lockfiles.locked_ffmpeg("linux-64").nvenc_min_driver == "610.00"
    assert lockfiles.locked_ffmpeg("osx-arm64").nvenc_min_driver is None


def test_version_1_fingerprints_still_compare():
    v1 = {"platform": "linux-cpu-x86_64", "os": "Debian", "cpu_model": "x", "gpus": [], "lock": {},
          "packages": {"torch": "2.13.0"}, "kit_version": "0.1.0"}
    assert environment.result_env(v1) == {"packages": {"torch": "2.13.0"}, "kit_version": "0.1.0"}
    assert environment.host_part(v1)["platform"] == "linux-cpu-x86_64"
    assert environment.result_env("garbage") == {}


def test_real_fingerprint_is_identical_in_a_fresh_process():
    """The real thing (this box's ffmpeg, packages, lock), computed twice in separate interpreters."""
    code = "from kit.env import fingerprint as e; print(e.fingerprint_id(e.fingerprint()))"
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
           for _ in range(2)}
    assert len(ids) == 1 and len(ids.pop()) == 16
    real = environment.fingerprint()
    assert real["host"]["platform"] == platform.detect().tag
    assert real["result_env"]["ffmpeg"] is not None and real["result_env"]["libvmaf"]["version"]
    assert real["host"]["lock"]["kind"] in ("pip", "pixi", "none")


def test_kit_commit_from_git_or_build_info():
    git = shutil.which("git")
    info = environment.build_info(ROOT)
    if git is None or info["commit"] is None:
        pytest.skip("not a git checkout")
    head = subprocess.run([git, "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert info["commit"] == head and environment.kit_commit()["commit"] == head
    assert environment.build_info(Path("/"))["commit"] is None


def test_describe_rows(ff):
    labels = [label for label, _ in environment.describe(fp(ff))]
    assert labels[0] == "result_env" and {"ffmpeg", "kit", "host", "lock", "gate defaults"} <= set(labels)
