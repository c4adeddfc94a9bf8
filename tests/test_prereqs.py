"""`ensemble-kit prereqs`: the real checks on this box, and each FAIL/WARN path with the one-line hint."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.env import prereqs
from kit.env.platform import GPU, HostPlatform

Probe = namedtuple("Probe", "encoder ok reason")
H100 = HostPlatform("linux-cuda", "x86_64", (GPU("nvidia", "NVIDIA H100 80GB HBM3", "550.90.07", 81559, 80000),))


def rows(report) -> dict[str, prereqs.Check]:
    return {c.name: c for c in report.checks}


@pytest.fixture(scope="module")
def real_report(tmp_path_factory) -> prereqs.PrereqReport:
    return prereqs.run_prereqs(out_dir=tmp_path_factory.mktemp("out") / "run")


def test_real_checks_on_this_box(real_report):
    got = rows(real_report)
    for name in ("ffmpeg", "ffmpeg lock", "libvmaf", "python packages", "lock drift", "gpu", "disk", "write permission"):
        assert name in got, name
    assert got["ffmpeg"].status == "PASS" and got["libvmaf"].status == "PASS"
    assert "2-frame score ok" in got["libvmaf"].detail
    assert got["encoder libx264"].status == "PASS"
    assert "libx264" in real_report.encoders
    assert all(c.status in ("PASS", "WARN", "FAIL") for c in real_report.checks)
    assert all(c.hint for c in real_report.checks if c.status != "PASS")  # every problem says what to do


def test_cli_json_and_exit_code(tmp_path: Path):
    result = CliRunner().invoke(main, ["prereqs", "--json", "--out-dir", str(tmp_path / "run")])
    data = json.loads(result.stdout)
    assert result.exit_code == (0 if data["ok"] else 3), result.output
    assert {c["name"] for c in data["checks"]} >= {"ffmpeg", "libvmaf", "disk"}


def test_requested_nvenc_really_fails_here_exit_3(tmp_path: Path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this box has an NVIDIA driver")
    args = ["prereqs", "--encoders", "h264_nvenc,libx264", "--out-dir", str(tmp_path)]
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 3 and "FAIL" in table.stdout and "encoder h264_nvenc" in table.output
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 3, result.output
    got = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert got["encoder h264_nvenc"]["status"] == "FAIL"
    assert "no NVIDIA GPU visible" in got["encoder h264_nvenc"]["detail"]
    assert got["encoder libx264"]["status"] == "PASS"


def test_unknown_encoder_is_bad_input(tmp_path: Path):
    result = CliRunner().invoke(main, ["prereqs", "--encoders", "x266", "--out-dir", str(tmp_path)])
    assert result.exit_code == 2 and "unknown encoder 'x266'" in result.output


def test_h100_nvenc_warns_with_fallback_and_strict_fails(tmp_path: Path):
    def probe(name):
        return Probe(name, name == "libx264", "ok" if name == "libx264" else "OpenEncodeSessionEx failed")

    report = prereqs.run_prereqs(out_dir=tmp_path, host=H100, probe=probe)
    got = rows(report)
    assert report.encoders == ("libx264",)
    assert got["encoder h264_nvenc"].status == "WARN" and "has no NVENC encoder" in got["encoder h264_nvenc"].detail
    assert got["encoders"].status == "WARN" and "falling back to libx264" in got["encoders"].detail
    assert got["gpu"].status == "PASS" and "none needed" in got["gpu"].detail  # nothing runs on the GPU
    strict = prereqs.run_prereqs(out_dir=tmp_path, host=H100, probe=probe, strict=True)
    assert {c.status for c in strict.checks} <= {"PASS", "FAIL"}
    with pytest.raises(prereqs.PrereqError, match="encoder h264_nvenc"):
        prereqs.require(strict)


def test_gpu_checked_only_where_it_is_used_and_low_memory_warns():
    busy = HostPlatform("linux-cuda", "x86_64", (GPU("nvidia", "NVIDIA L4", "550.1", 23034, 100),))
    assert prereqs.check_gpu(busy, ["libx264"]).status == "PASS"
    low = prereqs.check_gpu(busy, ["h264_nvenc"])
    assert low.status == "WARN" and "100 MiB free" in low.detail
    cpu_box = HostPlatform("linux-cpu", "x86_64", ())
    wrong_env = prereqs.check_gpu(cpu_box, ["libx264"], pixi_env="cuda")
    assert wrong_env.status == "FAIL" and "no NVIDIA GPU" in wrong_env.detail and "default (CPU)" in wrong_env.hint


def test_disk_estimate_and_shortage(tmp_path: Path, monkeypatch):
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "a.yuv").write_bytes(b"\0" * 1000)
    (refs / "b.yuv").write_bytes(b"\0" * 3000)
    assert prereqs.estimate_bytes(refs, jobs=1) == prereqs.DISK_HEADROOM + 3000
    assert prereqs.estimate_bytes(refs, jobs=4) == prereqs.DISK_HEADROOM + 4000
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(prereqs.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1 << 20))
    row = prereqs.check_disk(tmp_path / "new" / "run", refs, jobs=2)
    assert row.status == "FAIL" and str(tmp_path) in row.detail and "--out-dir" in row.hint


def test_out_dir_that_is_a_file_fails_write_check(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    row = prereqs.check_writable(blocker / "run")
    assert row.status == "FAIL" and "is a file" in row.detail
    ok = prereqs.check_writable(tmp_path / "not" / "yet" / "there")
    assert ok.status == "PASS" and not (tmp_path / "not").exists()  # checking creates nothing


def _broken_ffmpeg(tmp_path: Path, *, list_libvmaf: bool) -> Path:
    """Fault injection: the real ffmpeg behind a wrapper whose libvmaf is missing (or listed but broken)."""
    from kit.corpus import ffmpeg

    real = ffmpeg.find_ffmpeg().path
    hide = "" if list_libvmaf else f'if [ "$2" = "-filters" ]; then "{real}" "$@" | grep -v libvmaf; exit 0; fi\n'
    wrapper = tmp_path / ("ffmpeg-broken-vmaf" if list_libvmaf else "ffmpeg-no-vmaf")
    wrapper.write_text("#!/bin/sh\n" + hide +
                       'for a in "$@"; do case "$a" in *log_path=s.json*) echo "libvmaf: model load failed" >&2; exit 1;; esac; done\n'
                       f'exec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def test_ffmpeg_without_libvmaf_fails_the_libvmaf_row(tmp_path: Path):
    _, ff = prereqs.check_ffmpeg(str(_broken_ffmpeg(tmp_path, list_libvmaf=False)))
    assert ff is not None and not ff.has_libvmaf
    row = prereqs.check_libvmaf(ff)
    assert row.status == "FAIL" and "no libvmaf filter" in row.detail and "imageio-ffmpeg" in row.hint


def test_libvmaf_that_cannot_score_fails_the_libvmaf_row(tmp_path: Path):
    _, ff = prereqs.check_ffmpeg(str(_broken_ffmpeg(tmp_path, list_libvmaf=True)))
    assert ff is not None and ff.has_libvmaf
    row = prereqs.check_libvmaf(ff)
    assert row.status == "FAIL" and "model load failed" in row.detail


# ---- the NVENC driver floor and the Intel media stack (injected machine probes) --------------------


def _nvidia_host(driver: str, name: str = "NVIDIA GeForce RTX 4090") -> HostPlatform:
    from kit.env import platform

    gpu = GPU("nvidia", name, driver, 24564, 20000)
    return platform.detect(platform.Probes(system=lambda: "linux", machine=lambda: "x86_64",
                                           nvidia_gpus=lambda: [gpu], intel_gpus=lambda: []))


def test_driver_590_is_below_this_ffmpegs_nvenc_floor_and_610_passes(tmp_path: Path, monkeypatch):
    """The floor comes from the lock data of THIS ffmpeg (imageio-ffmpeg 0.8.1 Linux: 610.00), the driver from
    nvidia-smi (here: injected probes). 590 -> says what NVENC needs, the fallback and the driver to install."""
    from kit.corpus import ffmpeg
    from kit.env import lockfiles

    ff = ffmpeg.find_ffmpeg()
    if lockfiles.ffmpeg_by_sha256(lockfiles.binary_sha256(ff.path)) is None:
        pytest.skip("this box's ffmpeg is not a locked imageio-ffmpeg build")
    monkeypatch.delenv("PIXI_ENVIRONMENT_NAME", raising=False)

    def probe(name):  # what a 590 driver does to NVENC: the session cannot open
        return Probe(name, "nvenc" not in name, "ok" if "nvenc" not in name else "Driver does not support the required nvenc API version")

    old = _nvidia_host("590.48.01")
    assert old.family == "linux-cuda"
    report = prereqs.run_prereqs(out_dir=tmp_path, host=old, probe=probe)
    row = rows(report)["nvidia driver"]
    assert row.status == "WARN"  # the default environment: software encoders are its encoders anyway
    assert "needs NVIDIA driver >= 610.00; this box has 590.48.01" in row.detail
    assert "R610 branch or newer" in row.hint and "libx264, libx265, libsvtav1" in row.hint
    monkeypatch.setenv("PIXI_ENVIRONMENT_NAME", "cuda")  # NVENC is the point of this environment: FAIL
    report = prereqs.run_prereqs(out_dir=tmp_path, host=old, probe=probe)
    assert rows(report)["nvidia driver"].status == "FAIL"
    with pytest.raises(prereqs.PrereqError, match="nvidia driver"):
        prereqs.require(report)
    asked = prereqs.check_nvidia_driver(old, ff, ["h264_nvenc"])
    assert asked.status == "FAIL"
    assert prereqs.check_nvidia_driver(_nvidia_host("610.43.02"), ff, ["h264_nvenc"], "cuda").status == "PASS"
    assert prereqs.check_nvidia_driver(_nvidia_host("610.00"), ff, None, "cuda").status == "PASS"
    assert prereqs.check_nvidia_driver(HostPlatform("linux-cpu", "x86_64", ()), ff, None) is None


def test_data_centre_gpu_has_no_nvenc_at_any_driver():
    from kit.corpus import ffmpeg

    row = prereqs.check_nvidia_driver(_nvidia_host("610.43.02", "NVIDIA H200"), ffmpeg.find_ffmpeg(), None)
    assert row.status == "WARN" and "has no NVENC encoder" in row.detail and "libx264" in row.detail


def test_intel_media_env_needs_its_own_runtime_and_a_usable_render_node(tmp_path: Path):
    node = tmp_path / "renderD128"
    node.write_text("")
    arc = HostPlatform("linux-sycl", "x86_64", (GPU("intel", "Intel GPU 0x56a0", "i915", device=str(node)),))
    prefix = tmp_path / "env"
    (prefix / "lib" / "dri").mkdir(parents=True)
    env = {"EKIT_FFMPEG_LIBRARY_PATH": str(prefix / "lib"), "LIBVA_DRIVERS_PATH": str(prefix / "lib" / "dri"),
           "LIBVA_DRIVER_NAME": "iHD", "ONEVPL_PRIORITY_PATH": str(prefix / "lib")}
    incomplete = prereqs.check_intel_media(arc, ["h264_qsv"], "intel-media", env)
    assert incomplete.status == "FAIL" and "libmfx-gen.so.1.2" in incomplete.detail and "pixi install" in incomplete.hint
    for name in ("lib/libva.so.2", "lib/libva-drm.so.2", "lib/libmfx-gen.so.1.2", "lib/dri/iHD_drv_video.so"):
        (prefix / name).write_text("")
    assert prereqs.check_intel_media(arc, ["h264_qsv"], "intel-media", env).status == "PASS"
    host_stack = prereqs.check_intel_media(arc, ["h264_vaapi"], None, env)
    assert host_stack.status == "WARN" and "host's libva" in host_stack.detail
    assert prereqs.check_intel_media(arc, ["libx264"], None, env) is None
    locked_out = prereqs.check_intel_media(arc, ["h264_qsv"], "intel-media", env, can_open=lambda p: False)
    assert locked_out.status == "FAIL" and str(node) in locked_out.detail and "usermod -aG" in locked_out.hint
