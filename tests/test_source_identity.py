"""Source identity from content, exact frame timing, explicit beats inferred (issue 11, items 2, 3, 4).

Real ffmpeg + libvmaf on tiny clips (64x48, a few frames, one encoder, one cq).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import lavfi_clip

from kit.core.errors import BadInput
from kit.core.fsio import sha256_file
from kit.core.rundir import RunDir
from kit.corpus import engine, grid, sources, table
from kit.refs import manifest, pack, unpack


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_KIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def ctx(kit_ffmpeg):
    return grid.RunContext.detect(kit_ffmpeg)


def _corpus(ref_dir: Path, out: Path, ff, ctx) -> pd.DataFrame:
    found = sources.discover(ref_dir, ff=ff)
    summary = engine.run_corpus(RunDir(out), found, ["libx264"], [30], ff=ff, jobs=2, ctx=ctx)
    assert summary.ok, summary.to_json()
    return pd.read_parquet(RunDir(out).corpus)


def _keep_times(path: Path, data: bytes) -> None:
    """Replace a file's content and put its mtime back, as `cp -p`, `rsync -t` or tar do."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_swapped_same_size_same_mtime_clips_get_new_values(tmp_path, kit_ffmpeg, ctx):
    refs = tmp_path / "refs"
    refs.mkdir()
    a = lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", refs / "a.y4m", frames=4)
    b = lavfi_clip(kit_ffmpeg, "mandelbrot=s=64x48:r=25", refs / "b.y4m", frames=4)
    assert a.stat().st_size == b.stat().st_size
    os.utime(b, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    before = _corpus(refs, tmp_path / "run", kit_ffmpeg, ctx).set_index(["src", "frame_index"])
    data_a, data_b = a.read_bytes(), b.read_bytes()
    _keep_times(a, data_b)
    _keep_times(b, data_a)
    after = _corpus(refs, tmp_path / "run", kit_ffmpeg, ctx).set_index(["src", "frame_index"])
    for name, other in (("a", "b"), ("b", "a")):
        assert (after.loc[name, "src_sha256"] == before.loc[other, "src_sha256"]).all()
        assert list(after.loc[name, "vmaf"]) == list(before.loc[other, "vmaf"])
        assert list(after.loc[name, "vmaf"]) != list(before.loc[name, "vmaf"])
    assert set(after["src_sha256"]) == {sha256_file(a), sha256_file(b)}


def test_a_renamed_clip_is_the_same_source_under_its_new_name(tmp_path, kit_ffmpeg, ctx):
    refs = tmp_path / "refs"
    refs.mkdir()
    lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", refs / "old_name.y4m", frames=3)
    first = _corpus(refs, tmp_path / "run", kit_ffmpeg, ctx)
    (refs / "old_name.y4m").rename(refs / "new_name.y4m")
    found = sources.discover(refs, ff=kit_ffmpeg)
    summary = engine.run_corpus(RunDir(tmp_path / "run"), found, ["libx264"], [30], ff=kit_ffmpeg, ctx=ctx)
    assert (summary.done, summary.reused) == (0, 1)  # the cell is the content's: reused, not recomputed
    second = pd.read_parquet(RunDir(tmp_path / "run").corpus)
    assert set(second["src"]) == {"new_name"}  # never the stale name
    assert second.drop(columns=["src", "enc_time_ms", "score_time_ms"]).equals(
        first.drop(columns=["src", "enc_time_ms", "score_time_ms"]))


def test_exact_rates_from_every_kind_of_reference(tmp_path, kit_ffmpeg):
    mp4 = lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=26777/1000", tmp_path / "cup.mp4", frames=5,
                     extra=("-c:v", "libx264", "-preset", "ultrafast"))
    y4m = lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=26777/1000", tmp_path / "cup2.y4m", frames=3)
    yuv = lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", tmp_path / "ntsc_64x48_29.97fps.yuv", frames=2)
    assert sources.open_source(mp4, ff=kit_ffmpeg).fps_rational == "26777/1000"  # ffmpeg shows "26.78 fps"
    assert sources.open_source(y4m, ff=kit_ffmpeg).fps_rational == "26777/1000"
    assert sources.open_source(yuv, ff=kit_ffmpeg).fps_rational == "2997/100"  # the name's digits, exactly
    s = sources.open_source(yuv, ff=kit_ffmpeg, fps="30000/1001")
    assert (s.fps_rational, s.input_args()[s.input_args().index("-framerate") + 1]) == ("30000/1001", "30000/1001")


def test_the_corpus_of_an_unpacked_pack_equals_the_originals(tmp_path, kit_ffmpeg, ctx):
    """Pack a 26777/1000 mp4 and a variable-rate mkv, unpack, rebuild the corpus: the same content hash.
    (As docs/refs.md says, the originals' folder holds a copy of the pack's refs.json, so both key the
    sources by their raw frames.)"""
    originals = tmp_path / "originals"
    originals.mkdir()
    lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=26777/1000", originals / "cup.mp4", frames=5,
               extra=("-c:v", "libx264", "-preset", "ultrafast", "-crf", "12"))
    lavfi_clip(kit_ffmpeg, "mandelbrot=s=64x48:r=30,setpts='(N+2*floor(N/2))/30/TB'", originals / "vfr.mkv",
               frames=5, extra=("-c:v", "libx264", "-preset", "ultrafast", "-crf", "12"))
    packed = pack.pack(originals, tmp_path / "pack.tar", ff=kit_ffmpeg, jobs=2)
    entries = packed.manifest.by_name()
    assert entries["cup"].fps_rational == "26777/1000" and not entries["cup"].variable_rate
    assert entries["vfr"].variable_rate
    unpacked = unpack.unpack(tmp_path / "pack.tar", tmp_path / "unpacked", ff=kit_ffmpeg, jobs=2).out
    assert json.loads((unpacked / "cup.json").read_text())["fps_rational"] == "26777/1000"
    shutil.copy(unpacked / manifest.REFS_JSON, originals / manifest.REFS_JSON)
    ours = _corpus(originals, tmp_path / "run-originals", kit_ffmpeg, ctx)
    theirs = _corpus(unpacked, tmp_path / "run-unpacked", kit_ffmpeg, ctx)
    assert table.corpus_sha256(ours) == table.corpus_sha256(theirs)
    assert set(ours["fps"]) == {26.777, 30.0}


@pytest.mark.parametrize(("name", "both"), [("clip_64x96_from_96x64_25fps.yuv", "64x96 and 96x64"),
                                            ("seq_576x324_crf22_q_160x90.yuv", "576x324 and 160x90")])
def test_a_name_with_two_sizes_needs_a_flag_or_a_sidecar(tmp_path, kit_ffmpeg, capsys, name, both):
    clip = lavfi_clip(kit_ffmpeg, "testsrc2=s=96x64:r=25", tmp_path / name, frames=2)
    with pytest.raises(BadInput, match=f"{name}: its name states two frame sizes \\({both}\\)"):
        sources.open_source(clip, ff=kit_ffmpeg)
    s = sources.open_source(clip, ff=kit_ffmpeg, width=96, height=64, fps="25")
    assert (s.width, s.height, s.n_frames) == (96, 64, 2)
    (tmp_path / Path(name).with_suffix(".json").name).write_text(json.dumps({"width": 96, "height": 64}))
    assert (sources.open_source(clip, ff=kit_ffmpeg).width, capsys.readouterr().err.count("override")) == (96, 0)


def test_flags_beat_the_name_and_the_sidecar_with_a_note(tmp_path, kit_ffmpeg, capsys):
    clip = lavfi_clip(kit_ffmpeg, "testsrc2=s=96x64:r=25", tmp_path / "wrong_64x96_25fps.yuv", frames=2)
    s = sources.open_source(clip, ff=kit_ffmpeg, width=96, height=64)
    assert (s.width, s.height) == (96, 64)
    err = " ".join(capsys.readouterr().err.split())
    assert "wrong_64x96_25fps.yuv: --width 96, --height 64 override width 64, height 96 from its name" in err
    (tmp_path / "wrong_64x96_25fps.json").write_text(json.dumps({"width": 64, "height": 96, "fps": 50}))
    s = sources.open_source(clip, ff=kit_ffmpeg, width=96, height=64, fps="25")
    assert (s.width, s.height, s.fps_rational) == (96, 64, "25")
    assert "from its sidecar" in capsys.readouterr().err
    assert sources.open_source(clip, ff=kit_ffmpeg, width=96, height=64, fps="50").fps_rational == "50"
