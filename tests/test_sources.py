"""kit.corpus.sources: per-source geometry, exact frame counts, content hashes, clear errors for bad files."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import lavfi_clip

from kit.core.errors import BadInput
from kit.core.fsio import sha256_file
from kit.corpus import sources


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_KIT_CACHE", str(tmp_path / "cache"))


def _decoded_bytes(ff, source) -> int:
    """How many raw bytes ffmpeg reads through Source.input_args (must be exactly the reference frames)."""
    out = subprocess.run([str(ff.path), "-nostdin", "-v", "error", *source.input_args(), "-map", "0:v:0",
                          "-fps_mode", "passthrough", "-pix_fmt", source.pix_fmt, "-f", "rawvideo", "-"],
                         capture_output=True, check=True).stdout
    return len(out)


def test_raw_geometry_from_name_and_exact_frames(tmp_path, kit_ffmpeg):
    clip = lavfi_clip(kit_ffmpeg, "testsrc2=s=80x48:r=50", tmp_path / "clip_80x48_50fps_10bit.yuv", frames=6,
                      pix_fmt="yuv420p10le")
    s = sources.open_source(clip, ff=kit_ffmpeg)
    assert (s.kind, s.width, s.height, s.fps, s.pix_fmt, s.n_frames) == ("yuv", 80, 48, 50.0, "yuv420p10le", 6)
    assert s.src == "clip_80x48_50fps_10bit" and s.src_sha256 == sha256_file(clip)
    assert s.bit_depth == 10
    assert _decoded_bytes(kit_ffmpeg, s) == 6 * sources.frame_bytes(80, 48, "yuv420p10le")


def test_sidecar_beats_name_and_flags_fill_gaps(tmp_path, kit_ffmpeg):
    clip = lavfi_clip(kit_ffmpeg, "testsrc2=s=64x32:r=25", tmp_path / "odd_100x100.yuv", frames=4)
    (tmp_path / "odd_100x100.json").write_text(json.dumps({"width": 64, "height": 32, "fps": 30}))
    s = sources.open_source(clip, ff=kit_ffmpeg)
    assert (s.width, s.height, s.fps, s.n_frames) == (64, 32, 30.0, 4)
    bare = lavfi_clip(kit_ffmpeg, "testsrc2=s=64x32:r=25", tmp_path / "bare.yuv", frames=3)
    with pytest.raises(BadInput, match="bare.yuv.*cannot tell the frame size"):
        sources.open_source(bare, ff=kit_ffmpeg)
    s = sources.open_source(bare, ff=kit_ffmpeg, width=64, height=32, fps=24)
    assert (s.width, s.height, s.fps, s.n_frames, s.pix_fmt) == (64, 32, 24.0, 3, "yuv420p")


def test_raw_size_not_whole_frames_names_file_and_both_sizes(tmp_path, kit_ffmpeg):
    clip = lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", tmp_path / "cut_64x48_25fps.yuv", frames=3)
    with open(clip, "ab") as fh:
        fh.write(b"\0" * 100)
    with pytest.raises(BadInput) as info:
        sources.open_source(clip, ff=kit_ffmpeg)
    msg = str(info.value)
    assert "cut_64x48_25fps.yuv" in msg and str(3 * 4608 + 100) in msg and "4608" in msg


def test_y4m_header_and_truncation(tmp_path, kit_ffmpeg):
    clip = lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=30000/1001", tmp_path / "a.y4m", frames=5, pix_fmt="yuv422p")
    s = sources.open_source(clip, ff=kit_ffmpeg)
    assert (s.kind, s.width, s.height, s.pix_fmt, s.n_frames) == ("y4m", 64, 48, "yuv422p", 5)
    assert sources.fps_arg(s.fps) == "30000/1001"
    assert _decoded_bytes(kit_ffmpeg, s) == 5 * sources.frame_bytes(64, 48, "yuv422p")
    cut = tmp_path / "cut.y4m"
    cut.write_bytes(clip.read_bytes()[:-1000])
    with pytest.raises(BadInput, match="cut.y4m.*truncated"):
        sources.open_source(cut, ff=kit_ffmpeg)


def test_y4m_headers_ffmpeg_cannot_read_or_that_omit_the_rate(tmp_path, kit_ffmpeg, capsys):
    """`Im` (interlacing mixed per frame) was accepted, then ffmpeg refused to open the file in every cell
    (exit 4); a header without F silently became 25 fps (a raw .yuv without a rate says so)."""
    frames = (b"FRAME\n" + bytes(64 * 48 * 3 // 2)) * 2
    mixed = tmp_path / "mixed.y4m"
    mixed.write_bytes(b"YUV4MPEG2 W64 H48 F25:1 Im C420jpeg\n" + frames)
    assert subprocess.run([str(kit_ffmpeg.path), "-v", "error", "-i", str(mixed), "-f", "null", "-"]).returncode != 0
    with pytest.raises(BadInput, match="mixed.y4m: Y4M interlacing Im"):
        sources.open_source(mixed, ff=kit_ffmpeg)
    no_rate = tmp_path / "no_rate.y4m"
    no_rate.write_bytes(b"YUV4MPEG2 W64 H48 C420jpeg\n" + frames)
    assert sources.open_source(no_rate, ff=kit_ffmpeg).n_frames == 2
    assert "no_rate.y4m: its Y4M header has no frame rate; assuming 25 fps" in capsys.readouterr().err


def test_container_is_decoded_and_counted(tmp_path, kit_ffmpeg):
    clip = lavfi_clip(kit_ffmpeg, "testsrc2=s=96x64:r=24", tmp_path / "c.mp4", frames=7,
                      extra=("-c:v", "libx264", "-preset", "ultrafast", "-bf", "2"))
    s = sources.open_source(clip, ff=kit_ffmpeg)
    assert (s.kind, s.width, s.height, s.pix_fmt, s.fps, s.n_frames) == ("container", 96, 64, "yuv420p", 24.0, 7)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(clip.read_bytes()[:300])
    with pytest.raises(BadInput, match="broken.mp4"):
        sources.open_source(bad, ff=kit_ffmpeg)


def test_discover_reports_duplicates_once_and_rejects_name_clashes(tmp_path, kit_ffmpeg, capsys):
    a = lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", tmp_path / "a.y4m", frames=3)
    (tmp_path / "copy_of_a.y4m").write_bytes(a.read_bytes())
    lavfi_clip(kit_ffmpeg, "mandelbrot=s=64x48:r=25", tmp_path / "m_64x48_25fps.yuv", frames=3)
    (tmp_path / "notes.txt").write_text("ignored")
    found = sources.discover(tmp_path, ff=kit_ffmpeg)
    assert [s.src for s in found] == ["a", "m_64x48_25fps"]
    err = capsys.readouterr().err
    assert err.count("same content") == 1 and "copy_of_a.y4m" in err
    lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", tmp_path / "a.mp4", frames=2,
               extra=("-c:v", "libx264", "-preset", "ultrafast"))
    with pytest.raises(BadInput, match="same name 'a'"):
        sources.discover(tmp_path, ff=kit_ffmpeg)


def test_what_discover_leaves_out_is_never_silent(tmp_path, kit_ffmpeg, capsys):
    """A clip in a subfolder, a file that is no clip, and a link to a clip on an unmounted share were all
    skipped without a word: the corpus silently had fewer sources than the user's folder."""
    lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", tmp_path / "a.y4m", frames=2)
    (tmp_path / "more").mkdir()
    lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", tmp_path / "more" / "b.y4m", frames=2)
    (tmp_path / "c.rgb").write_bytes(b"x")
    (tmp_path / "a.json").write_text("{}")  # a sidecar-shaped file and notes are expected beside clips
    (tmp_path / "notes.txt").write_text("n")
    assert [s.src for s in sources.discover(tmp_path, ff=kit_ffmpeg)] == ["a"]
    err = capsys.readouterr().err
    assert "not used: c.rgb, more/" in err and "folders are not searched" in err
    assert "a.json" not in err and "notes.txt" not in err
    (tmp_path / "nas.mp4").symlink_to(tmp_path / "unmounted" / "nas.mp4")
    with pytest.raises(BadInput, match="nas.mp4 is a symbolic link to .*unmounted/nas.mp4, which does not exist"):
        sources.discover(tmp_path, ff=kit_ffmpeg)


def test_names_that_read_the_same_are_one_name(tmp_path, kit_ffmpeg):
    """'café' typed (U+00E9) and as macOS writes it ('e' + U+0301) were two sources whose names print
    identically in every table, plot and fold: now the same name clash as two equal stems."""
    lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", tmp_path / "caf\u00e9.y4m", frames=2)
    lavfi_clip(kit_ffmpeg, "mandelbrot=s=64x48:r=25", tmp_path / "cafe\u0301.y4m", frames=2)
    with pytest.raises(BadInput, match=r"same name .*spelled 'cafe\\u0301' and 'caf\\xe9'"):
        sources.discover(tmp_path, ff=kit_ffmpeg)


def test_missing_empty_and_unreadable_inputs_are_bad_input(tmp_path, kit_ffmpeg):
    with pytest.raises(BadInput, match="not a directory"):
        sources.discover(tmp_path / "missing", ff=kit_ffmpeg)
    with pytest.raises(BadInput, match="holds no reference clips"):
        sources.discover(tmp_path, ff=kit_ffmpeg)
    (tmp_path / "zero_64x48.yuv").write_bytes(b"")
    with pytest.raises(BadInput, match="zero_64x48.yuv.*empty"):
        sources.discover(tmp_path, ff=kit_ffmpeg)


def test_cache_does_not_rehash_unchanged_files(tmp_path, kit_ffmpeg, monkeypatch):
    clip = lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", tmp_path / "c_64x48.yuv", frames=2)
    first = sources.open_source(clip, ff=kit_ffmpeg, fps=25)
    monkeypatch.setattr(sources, "sha256_file", lambda p: pytest.fail("re-hashed an unchanged file"))
    assert sources.open_source(clip, ff=kit_ffmpeg, fps=25) == first


def test_real_footage_samples(shared_media, kit_ffmpeg):
    found = {s.src: s for s in sources.discover(shared_media, ff=kit_ffmpeg)}
    seek = found["Seeking_10_288_375"]
    assert (seek.kind, seek.width, seek.height, seek.n_frames, seek.fps) == ("container", 384, 288, 150, 25.0)
    joy = found["park_joy_420_720p50_frm0to9_480x270"]
    assert (joy.kind, joy.width, joy.height, joy.n_frames, joy.fps) == ("y4m", 480, 270, 10, 50.0)


def test_a_sidecar_pix_fmt_with_no_raw_layout_names_the_file(tmp_path, kit_ffmpeg):
    clip = tmp_path / "rgb_64x48_25fps.yuv"
    clip.write_bytes(b"\0" * 64 * 48 * 3)
    (tmp_path / "rgb_64x48_25fps.json").write_text(json.dumps({"pix_fmt": "rgb24"}))
    with pytest.raises(BadInput, match=r"rgb_64x48_25fps\.yuv: pix_fmt 'rgb24' is not a raw layout"):
        sources.open_source(clip, ff=kit_ffmpeg)
