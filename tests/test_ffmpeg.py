"""kit.corpus.ffmpeg: ffmpeg discovery order, the probe cache, and encoders that must really encode."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kit.core.errors import ExitCode, PrereqError
from kit.corpus import ffmpeg


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ENSEMBLE_KIT_FFMPEG", raising=False)
    ffmpeg._probe_memo.clear()


def _wrapper(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_finds_an_ffmpeg_with_libvmaf(kit_ffmpeg):
    ff = ffmpeg.find_ffmpeg()
    assert ff.has_libvmaf and ff.libvmaf_version and ff.libvmaf_version != "unknown"
    assert ff.version.startswith(("n", "N", "1", "2", "3", "4", "5", "6", "7", "8", "9"))
    assert "libx264" in ff.encoders and "libvmaf" in ff.filters
    assert any(flag.startswith("--enable-libvmaf") for flag in ff.configure)
    assert len(ff.configure_sha256) == 64
    assert ff.origin in ("imageio", "path", "binaries")


def test_explicit_path_that_does_not_exist_is_a_prereq_error(tmp_path):
    with pytest.raises(PrereqError, match="nope/ffmpeg") as info:
        ffmpeg.find_ffmpeg(str(tmp_path / "nope" / "ffmpeg"))
    assert info.value.exit_code == ExitCode.PREREQS


def test_env_var_wins_over_bundled(tmp_path, kit_ffmpeg, monkeypatch):
    link = tmp_path / "ffmpeg"
    link.symlink_to(kit_ffmpeg.path)
    monkeypatch.setenv("ENSEMBLE_KIT_FFMPEG", str(link))
    assert ffmpeg.find_ffmpeg().origin == "env"
    assert ffmpeg.find_ffmpeg(str(link)).origin == "flag"


def test_ffmpeg_without_libvmaf_is_refused_unless_not_required(tmp_path, kit_ffmpeg):
    # Fault injection: a build whose filter list lacks libvmaf (like Debian's ffmpeg).
    fake = _wrapper(tmp_path / "ffmpeg-novmaf", f'if [[ "$*" == *-filters* ]]; then "{kit_ffmpeg.path}" "$@" | grep -v libvmaf; '
                                               f'else exec "{kit_ffmpeg.path}" "$@"; fi\n')
    with pytest.raises(PrereqError, match="no libvmaf"):
        ffmpeg.find_ffmpeg(str(fake))
    ff = ffmpeg.find_ffmpeg(str(fake), require_libvmaf=False)
    assert not ff.has_libvmaf and ff.libvmaf_version is None


def test_probe_is_cached_on_path_size_mtime(tmp_path, kit_ffmpeg):
    log = tmp_path / "calls.log"
    fake = _wrapper(tmp_path / "ffmpeg", f'echo "$*" >> "{log}"\nexec "{kit_ffmpeg.path}" "$@"\n')
    ffmpeg.probe_ffmpeg(fake)
    first = log.read_text().count("\n")
    assert first >= 3  # -version, -encoders, -filters (+ the libvmaf version probe)
    ffmpeg._probe_memo.clear()  # a new process: only the disk cache remains
    ffmpeg.probe_ffmpeg(fake)
    assert log.read_text().count("\n") == first
    st = fake.stat()
    os.utime(fake, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a rebuilt binary is probed again
    ffmpeg._probe_memo.clear()
    ffmpeg.probe_ffmpeg(fake)
    assert log.read_text().count("\n") == 2 * first


def test_software_encoders_really_encode(kit_ffmpeg):
    for name in ("libx264", "libx265", "libsvtav1"):
        probe = ffmpeg.probe_encoder(kit_ffmpeg, name)
        assert probe.ok, probe.reason


def test_listed_hardware_encoders_are_unavailable_with_a_reason(kit_ffmpeg):
    if ffmpeg.render_nodes() or Path("/proc/driver/nvidia").exists():
        pytest.skip("this box has a GPU: the no-GPU reasons do not apply")
    nvenc = ffmpeg.probe_encoder(kit_ffmpeg, "h264_nvenc")
    assert "h264_nvenc" in kit_ffmpeg.encoders  # listed by ffmpeg ...
    assert not nvenc.ok and nvenc.reason and nvenc.reason != "ok"  # ... but a real encode fails
    assert "cuda" in nvenc.reason.lower() or "nvenc" in nvenc.reason.lower() or "device" in nvenc.reason.lower()
    qsv = ffmpeg.probe_encoder(kit_ffmpeg, "h264_qsv")
    assert not qsv.ok and "render node" in qsv.reason
    vtb = ffmpeg.probe_encoder(kit_ffmpeg, "h264_videotoolbox")
    assert not vtb.ok and "no h264_videotoolbox encoder" in vtb.reason


def test_qsv_uses_the_first_working_render_node_not_a_fixed_one(kit_ffmpeg, monkeypatch, tmp_path):
    from kit.corpus import encoders

    nodes = [tmp_path / "renderD128", tmp_path / "renderD129"]
    monkeypatch.setattr(ffmpeg, "render_nodes", lambda: nodes)
    ffmpeg._encoder_memo.pop((str(kit_ffmpeg.path), "h264_vaapi"), None)
    probe = ffmpeg.probe_encoder(kit_ffmpeg, "h264_vaapi")
    ffmpeg._encoder_memo.pop((str(kit_ffmpeg.path), "h264_vaapi"), None)
    assert not probe.ok and str(nodes[0]) in probe.reason and str(nodes[1]) in probe.reason  # both were tried
    pre, vf = encoders.hw_setup(encoders.get("h264_qsv"), str(nodes[1]), ten_bit=False)
    assert any(str(nodes[1]) in a for a in pre) and "renderD128" not in " ".join(pre)
    assert vf.startswith("format=nv12,hwupload")
