"""kit.corpus.scoring and `ensemble-kit score`: libvmaf per-frame features, pooling and the failure checks."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from click.testing import CliRunner
from conftest import lavfi_clip

from kit.cli import main
from kit.core.errors import ExitCode
from kit.core.schema import FEATURES, LIBVMAF_KEYS
from kit.corpus import scoring, sources


@pytest.fixture(scope="module")
def pair(tmp_path_factory, kit_ffmpeg):
    """A raw reference and an x264 encode of it (12 frames, 160x90)."""
    d = tmp_path_factory.mktemp("score_pair")
    ref = lavfi_clip(kit_ffmpeg, "testsrc2=s=160x90:r=25", d / "ref_160x90_25fps.yuv", frames=12)
    dis = d / "dis.mp4"
    subprocess.run([str(kit_ffmpeg.path), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", "160x90",
                    "-r", "25", "-i", str(ref), "-c:v", "libx264", "-preset", "ultrafast", "-crf", "38", str(dis)],
                   check=True)
    return ref, dis


def _ffmpeg_pooled_vmaf(ff, ref, dis) -> float:
    """ffmpeg's own libvmaf run, the plain way (its log line), as the independent reference value."""
    proc = subprocess.run([str(ff.path), "-hide_banner", "-i", str(dis), "-f", "rawvideo", "-pix_fmt", "yuv420p",
                           "-s", "160x90", "-r", "25", "-i", str(ref), "-lavfi", "[0:v][1:v]libvmaf", "-f", "null", "-"],
                          capture_output=True, text=True, check=True)
    return float(proc.stderr.rsplit("VMAF score:", 1)[1].split()[0])


def test_score_matches_ffmpegs_own_libvmaf_and_pools_as_mean(pair, kit_ffmpeg):
    ref, dis = pair
    r, d, result = scoring.score_files(kit_ffmpeg, ref, dis, n_threads=2)
    assert result.n_frames == 12 == r.n_frames
    assert set(result.frames[0]) == set(LIBVMAF_KEYS)
    pooled = result.pooled()["vmaf"]
    assert pooled == pytest.approx(math.fsum(f["vmaf"] for f in result.frames) / 12, abs=1e-12)
    assert pooled == pytest.approx(result.libvmaf_pooled["mean"], abs=1e-5)  # libvmaf's own pooled mean
    assert pooled == pytest.approx(_ffmpeg_pooled_vmaf(kit_ffmpeg, ref, dis), abs=1e-4)
    assert 20 < pooled < 99  # a real distortion, not identity
    assert all(0 <= f["adm2"] <= 1.01 for f in result.frames)
    assert result.libvmaf_version == kit_ffmpeg.libvmaf_version


def test_threads_do_not_change_values(pair, kit_ffmpeg):
    ref, dis = pair
    one = scoring.score_files(kit_ffmpeg, ref, dis, n_threads=1)[2]
    two = scoring.score_files(kit_ffmpeg, ref, dis, n_threads=2)[2]
    assert one.frames == two.frames


def test_identity_scores_high_and_features_are_one(kit_ffmpeg, tiny_refs):
    ref = sources.open_source(tiny_refs / "tsrc.y4m", ff=kit_ffmpeg)
    result = scoring.score(kit_ffmpeg, ref, ref.input_args())
    assert all(f["vif_scale0"] == pytest.approx(1.0, abs=1e-6) for f in result.frames)
    assert result.pooled()["vmaf"] > 95


def _real_log(kit_ffmpeg, tiny_refs) -> dict:
    ref = sources.open_source(tiny_refs / "tsrc.y4m", ff=kit_ffmpeg)
    with pytest.MonkeyPatch.context():
        pass
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        scoring.score(kit_ffmpeg, ref, ref.input_args(), workdir=Path(tmp))
        return json.loads((Path(tmp) / "vmaf.json").read_text())


def test_a_frame_missing_a_key_fails_the_score(kit_ffmpeg, tiny_refs):
    # libvmaf with n_threads > 0 silently drops a failed feature: simulate that on a real log.
    log = _real_log(kit_ffmpeg, tiny_refs)
    scoring.parse_vmaf_json(json.dumps(log), expected_frames=8)  # the real log passes
    del log["frames"][5]["metrics"][LIBVMAF_KEYS[FEATURES[3]]]
    with pytest.raises(scoring.ToolFailed, match="frame 5 lacks integer_vif_scale2"):
        scoring.parse_vmaf_json(json.dumps(log), expected_frames=8)


def test_frame_count_must_equal_the_reference(kit_ffmpeg, tiny_refs):
    log = _real_log(kit_ffmpeg, tiny_refs)
    with pytest.raises(scoring.ToolFailed, match="decodes to 8 frames but the reference has 9"):
        scoring.parse_vmaf_json(json.dumps(log), expected_frames=9)
    ref = sources.open_source(tiny_refs / "tsrc.y4m", ff=kit_ffmpeg)
    with pytest.raises(scoring.ToolFailed, match="decodes to 6 frames"):
        scoring.score(kit_ffmpeg, ref, ["-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=0.24"])


def test_score_cli_json_and_table(pair):
    ref, dis = pair
    r = CliRunner().invoke(main, ["score", str(ref), str(dis), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert len(data["frames"]) == 12 and data["model"] == "vmaf_v0.6.1"
    assert data["pooled_mean"]["vmaf"] == pytest.approx(data["libvmaf_pooled_vmaf"]["mean"], abs=1e-5)
    r = CliRunner().invoke(main, ["score", str(ref), str(dis)])
    assert r.exit_code == 0 and "VMAF" in r.stdout and "mean" in r.stdout


def test_score_cli_geometry_flags_and_bad_pairs(tmp_path, kit_ffmpeg):
    ref = lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", tmp_path / "ref.yuv", frames=4)
    r = CliRunner().invoke(main, ["score", str(ref), str(ref), "--width", "64", "--height", "48", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["frames"]) == 4
    r = CliRunner().invoke(main, ["score", str(ref), str(ref)])
    assert r.exit_code == ExitCode.BAD_INPUT and "ref.yuv" in r.output and "Traceback" not in r.output
    short = lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=25", tmp_path / "short.y4m", frames=3)
    r = CliRunner().invoke(main, ["score", str(ref), str(short), "--width", "64", "--height", "48"])
    assert r.exit_code == ExitCode.BAD_INPUT and "3 frames" in r.output and "4" in r.output
    assert "(score clips with the same frames: trim one of them)" in r.output  # one pair of parentheses


def test_frames_libvmaf_cannot_score_are_refused_before_any_work(tmp_path, kit_ffmpeg):
    """libvmaf kills ffmpeg with SIGSEGV on frames under 18 pixels a side: `corpus` failed every cell (exit 4,
    'killed by signal 11: no error message') and `score` said work failed; both are the clip's size, exit 2."""
    refs = tmp_path / "refs"
    refs.mkdir()
    lavfi_clip(kit_ffmpeg, "testsrc2=s=16x16:r=25", refs / "thumb.y4m", frames=2)
    out = tmp_path / "run"
    for argv in (["corpus", "--ref-dir", str(refs), "--encoders", "libx264", "--cqs", "30", "--out-dir", str(out)],
                 ["score", str(refs / "thumb.y4m"), str(refs / "thumb.y4m")]):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == ExitCode.BAD_INPUT, result.output
        assert "thumb.y4m is 16x16: libvmaf cannot score frames under 18 pixels" in result.output
    assert not list(out.rglob("*.parquet"))
    # the smallest size it does score
    lavfi_clip(kit_ffmpeg, "testsrc2=s=100x18:r=25", refs / "thumb.y4m", frames=2)
    result = CliRunner().invoke(main, ["score", str(refs / "thumb.y4m"), str(refs / "thumb.y4m")])
    assert result.exit_code == 0, result.output
