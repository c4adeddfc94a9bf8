"""The vmaf CLI as a scorer (kit.corpus.vmaf_cli + scoring's FIFO path), on the stand-in CLI the kit builds
from tests/fixtures/fake-libvmaf: its interface is the real CLI's, its numbers are ffmpeg's libvmaf filter's.

What is checked: rows equal the filter's (here exactly; the real fork within 1e-4, tests/test_libvmaf_real.py),
8-, 10- and 16-bit frames through raw FIFOs, errors in causal order (a short encode is a frame count,
not a "Broken pipe"; a decoder that fails on its own is named and nothing hangs), which scorer `auto`
picks, the build record's trust rules, and that the scorer is in cell ids, grid.json and the fingerprint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import lavfi_clip

from kit.cli import main
from kit.core.errors import BadInput, PrereqError
from kit.core.proc import ToolFailed
from kit.core.schema import LIBVMAF_KEYS
from kit.corpus import grid, scoring, sources, vmaf_cli
from kit.env import fingerprint


def _max_delta(a: scoring.ScoreResult, b: scoring.ScoreResult) -> float:
    assert a.n_frames == b.n_frames
    return max(abs(x[k] - y[k]) for x, y in zip(a.frames, b.frames, strict=True) for k in LIBVMAF_KEYS)


DEPTHS = {"8bit": "yuv420p", "10bit": "yuv420p10le", "16bit": "yuv444p16le"}  # 16-bit: raw FIFOs, not Y4M


@pytest.fixture(scope="module")
def refs(tmp_path_factory, kit_ffmpeg) -> Path:
    """Per depth: a reference (64x48, 8 frames) and a blurred, noisy copy, as Y4M."""
    d = tmp_path_factory.mktemp("cli_refs")
    for name, pix_fmt in DEPTHS.items():
        for suffix, graph in (("", "testsrc2=s=64x48:r=25"),
                              ("_dis", "testsrc2=s=64x48:r=25,gblur=sigma=1,noise=alls=10:allf=t:all_seed=3")):
            lavfi_clip(kit_ffmpeg, graph, d / f"{name}{suffix}.y4m", frames=8, pix_fmt=pix_fmt, extra=("-strict", "-1"))
    return d


@pytest.mark.parametrize("depth", list(DEPTHS))
def test_cli_rows_equal_the_filters_at_every_depth(refs, depth, kit_ffmpeg, fake_vmaf):
    ref = sources.open_source(refs / f"{depth}.y4m", ff=kit_ffmpeg)
    dis = sources.open_source(refs / f"{depth}_dis.y4m", ff=kit_ffmpeg)
    assert ref.pix_fmt == DEPTHS[depth]
    by_filter = scoring.score(kit_ffmpeg, ref, dis.input_args(), n_threads=2)
    by_cli = scoring.score(kit_ffmpeg, ref, dis.input_args(), n_threads=2, vmaf_cli=fake_vmaf)
    assert by_cli.backend == "vmaf-cli" and by_cli.extra == {"vmaf_backend": "cpu"} and by_cli.n_frames == 8
    assert _max_delta(by_cli, by_filter) <= 1e-4
    assert 20 < by_cli.pooled()["vmaf"] < 99.9  # a real distortion


def test_a_short_encode_is_a_frame_count_not_a_broken_pipe(refs, kit_ffmpeg, fake_vmaf):
    ref = sources.open_source(refs / "8bit.y4m", ff=kit_ffmpeg)
    with pytest.raises(ToolFailed, match="decodes to 6 frames but the reference has 8") as err:
        scoring.score(kit_ffmpeg, ref, ["-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=0.24"], vmaf_cli=fake_vmaf)
    assert "Broken pipe" not in str(err.value)


def test_a_decoder_that_fails_on_its_own_is_named_and_nothing_hangs(refs, tmp_path, kit_ffmpeg, fake_vmaf):
    ref = sources.open_source(refs / "8bit.y4m", ff=kit_ffmpeg)
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 50)
    with pytest.raises(ToolFailed) as err:
        scoring.score(kit_ffmpeg, ref, ["-i", str(garbage)], vmaf_cli=fake_vmaf, timeout=60)
    assert err.value.stage == "decode distorted" and err.value.kind == "exit"


def test_vmafs_own_failure_is_reported_as_vmafs(refs, kit_ffmpeg, fake_vmaf):
    ref = sources.open_source(refs / "8bit.y4m", ff=kit_ffmpeg)
    with pytest.raises(ToolFailed, match=r"vmaf failed \(exit code") as err:
        scoring.score(kit_ffmpeg, ref, ref.input_args(), model="vmaf_v9.9", vmaf_cli=fake_vmaf, timeout=60)
    assert "Broken pipe" not in err.value.reason


def test_null_metrics_are_non_finite_failures_not_crashes(kit_ffmpeg, tiny_refs):
    ref = sources.open_source(tiny_refs / "tsrc.y4m", ff=kit_ffmpeg)
    log = {"version": "x", "frames": [{"frameNum": i, "metrics": {k: 0.5 for k in LIBVMAF_KEYS.values()}}
                                      for i in range(ref.n_frames)]}
    log["frames"][3]["metrics"]["integer_motion2"] = None  # libvmaf's JSON writer prints NaN/Inf as null
    with pytest.raises(ToolFailed, match="frame 3 has a non-finite value"):
        scoring.parse_vmaf_json(json.dumps(log), expected_frames=ref.n_frames)


def test_fallback_lines_of_the_real_cli_are_recognised():
    real = ("Cannot load libcuda.so.1\nlibvmaf ERROR CUDA: failed to load the Nvidia driver library\n"
            "problem during vmaf_cuda_state_init, using CPU\n")
    assert vmaf_cli.fallback_line(real) == "problem during vmaf_cuda_state_init, using CPU"
    assert vmaf_cli.fallback_line("problem during vmaf_sycl_state_init, using CPU") is not None
    assert vmaf_cli.fallback_line("VMAF score: 93.1\n") is None


@pytest.fixture
def no_staged(tmp_path, monkeypatch):
    """This test's own binaries/<platform>/bin (empty), and no ENSEMBLE_KIT_VMAF."""
    monkeypatch.setattr(vmaf_cli, "platform_bin", lambda name: tmp_path / "staged" / name)
    monkeypatch.delenv("ENSEMBLE_KIT_VMAF", raising=False)
    return tmp_path / "staged"


def test_which_scorer_a_run_uses(no_staged, monkeypatch, fake_vmaf, tmp_path, capsys):
    assert vmaf_cli.choose_scorer("ffmpeg") is None and vmaf_cli.choose_scorer("auto") is None
    with pytest.raises(PrereqError, match="--scorer vmaf: no vmaf CLI"):
        vmaf_cli.choose_scorer("vmaf")
    with pytest.raises(BadInput, match="--scorer"):
        vmaf_cli.choose_scorer("gpu")
    monkeypatch.setenv("ENSEMBLE_KIT_VMAF", str(fake_vmaf.path))
    assert vmaf_cli.choose_scorer("vmaf") == fake_vmaf
    assert vmaf_cli.choose_scorer("auto") is None  # a CPU build brings nothing the filter lacks
    monkeypatch.setenv("ENSEMBLE_KIT_VMAF", str(tmp_path / "missing"))
    with pytest.raises(PrereqError, match="ENSEMBLE_KIT_VMAF=.* is not an executable file"):
        vmaf_cli.choose_scorer("vmaf")


def test_a_record_is_trusted_only_for_its_own_binary(tmp_path, fake_vmaf, capsys):
    copy = tmp_path / "bin" / "vmaf"
    copy.parent.mkdir()
    copy.write_bytes(fake_vmaf.path.read_bytes())
    copy.chmod(0o755)
    record = json.loads(vmaf_cli.record_path(fake_vmaf.path).read_text())
    vmaf_cli.record_path(copy).write_text(json.dumps({**record, "backend": "cuda", "run_flags": ["--backend", "cuda"]}))
    assert vmaf_cli.load(copy).backend == "cuda"  # same bytes: the record holds
    copy.write_bytes(fake_vmaf.path.read_bytes() + b"\0")  # replaced since
    loaded = vmaf_cli.load(copy)
    assert not loaded.recorded and loaded.backend == "cpu" and loaded.version == "3.0.0"
    assert "describes another binary" in capsys.readouterr().err
    vmaf_cli.record_path(copy).write_text("{not json")
    assert not vmaf_cli.load(copy).recorded


def test_the_scorer_is_in_cell_ids_and_the_fingerprint(kit_ffmpeg, fake_vmaf):
    by_filter = grid.RunContext.detect(kit_ffmpeg)
    by_cli = grid.RunContext.detect(kit_ffmpeg, vmaf_cli=fake_vmaf)
    assert by_filter.scorer_identity() == {"backend": "ffmpeg-libvmaf", "libvmaf_version": kit_ffmpeg.libvmaf_version}
    assert by_cli.scorer_identity()["version"] == "3.0.0" and "sha256" not in by_cli.scorer_identity()
    assert by_filter.env_fingerprint != by_cli.env_fingerprint
    fp = fingerprint.fingerprint(kit_ffmpeg, scorer=vmaf_cli.scorer_fingerprint(fake_vmaf, kit_ffmpeg.libvmaf_version))
    assert fp["result_env"]["scorer"]["sha256"] == fake_vmaf.sha256


def test_corpus_and_score_with_the_vmaf_scorer_equal_the_filters(tiny_refs, tmp_path, monkeypatch, fake_vmaf):
    monkeypatch.setenv("ENSEMBLE_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ENSEMBLE_KIT_VMAF", str(fake_vmaf.path))
    corpora = {}
    for scorer in ("ffmpeg", "vmaf"):
        out = tmp_path / scorer
        r = CliRunner().invoke(main, ["corpus", "--ref-dir", str(tiny_refs), "--encoders", "libx264", "--cqs", "33",
                                      "--scorer", scorer, "--out-dir", str(out), "--quiet", "--json"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["scorer"]["backend"] == {"ffmpeg": "ffmpeg-libvmaf", "vmaf": "vmaf-cli"}[scorer]
        assert json.loads((out / "corpus" / "grid.json").read_text())["scorer"] == json.loads(r.stdout)["scorer"]
        corpora[scorer] = pd.read_parquet(out / "corpus.parquet")
    a, b = corpora["ffmpeg"], corpora["vmaf"]
    assert len(a) == len(b) == 16 and list(a["frame_index"]) == list(b["frame_index"])
    assert (a[list(LIBVMAF_KEYS)] - b[list(LIBVMAF_KEYS)]).abs().max().max() <= 1e-4
    assert set(a["cell_id"]).isdisjoint(set(b["cell_id"]))  # another scorer: other cells
    ref = tiny_refs / "tsrc.y4m"
    r = CliRunner().invoke(main, ["score", str(ref), str(ref), "--scorer", "vmaf", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["scorer"]["backend"] == "vmaf-cli"


def test_score_files_unblocks_when_vmaf_is_missing(tiny_refs, kit_ffmpeg, fake_vmaf, tmp_path):
    gone = vmaf_cli.VmafCli(path=tmp_path / "no-vmaf", version="x", sha256="")
    with pytest.raises(ToolFailed, match="cannot start"):
        scoring.score(kit_ffmpeg, sources.open_source(tiny_refs / "tsrc.y4m", ff=kit_ffmpeg),
                      ["-i", str(tiny_refs / "tsrc.y4m")], vmaf_cli=gone, timeout=30)
