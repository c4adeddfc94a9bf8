"""The bad-input battery: every broken input gets one clear line naming it, and the documented exit code.

Runs through the real CLI door (click's runner with the KitGroup), so a traceback anywhere fails here.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from bundle_edit import edit_json, edited
from click.testing import CliRunner

from kit.cli import main
from kit.core.archive import write_reproducible_tar
from kit.core.errors import ExitCode
from kit.results import bundle


def _invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    text = result.output
    assert "Traceback" not in text, text
    assert "internal error" not in text, text
    return result, text


def _one_error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, text
    assert lines[-1] == errors[0], f"the error must be one line, nothing after it:\n{text}"
    return errors[0]


def _hostile_tar(path: Path, name: str, *, link: str | None = None, data: bytes = b"x") -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo(name)
        if link is not None:
            info.type = tarfile.SYMTYPE
            info.linkname = link
            tf.addfile(info)
        else:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return path


@pytest.fixture
def good_bundle(tmp_path, fake_run) -> Path:
    return bundle.make_bundle(fake_run(tmp_path / "run")).path


def _cases(tmp: Path, good: Path) -> list[tuple[list[str], ExitCode, str]]:
    """(argv, exit code, a phrase the one-line message must contain)."""
    empty = tmp / "empty.tar.gz"
    empty.write_bytes(b"")
    garbage = tmp / "garbage.tar.gz"
    garbage.write_bytes(os.urandom(4096))
    truncated = tmp / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    traversal = _hostile_tar(tmp / "traversal.tar.gz", "../../etc/evil")
    absolute = _hostile_tar(tmp / "absolute.tar.gz", "/tmp/evil")
    symlink = _hostile_tar(tmp / "symlink.tar.gz", "run/corpus.parquet", link="/etc/passwd")
    not_a_bundle = tmp / "plain.tar.gz"
    (tmp / "plain").mkdir()
    (tmp / "plain" / "hello.txt").write_text("hi")
    write_reproducible_tar([("plain/hello.txt", tmp / "plain" / "hello.txt")], not_a_bundle)
    empty_dir = tmp / "emptydir"
    empty_dir.mkdir()
    bad_verdict_dir = tmp / "badverdict"
    bad_verdict_dir.mkdir()
    (bad_verdict_dir / "verdict.json").write_text("{not json")
    return [
        (["verify", str(tmp / "missing.tar.gz")], ExitCode.BAD_INPUT, "bundle not found"),
        (["verify", str(empty)], ExitCode.BAD_INPUT, "is empty (0 bytes)"),
        (["verify", str(garbage)], ExitCode.BAD_INPUT, "not a readable tar archive"),
        (["verify", str(truncated)], ExitCode.BAD_INPUT, "truncated or corrupt"),
        (["verify", str(traversal)], ExitCode.BAD_INPUT, "path traversal"),
        (["verify", str(absolute)], ExitCode.BAD_INPUT, "absolute path"),
        (["verify", str(symlink)], ExitCode.BAD_INPUT, "symbolic link"),
        (["verify", str(not_a_bundle)], ExitCode.BAD_INPUT, "not an ensemble-kit results bundle"),
        (["verify", str(empty_dir)], ExitCode.BAD_INPUT, "is not a file"),
        (["compare", str(good), str(tmp / "nope")], ExitCode.BAD_INPUT, "not found"),
        (["compare", str(empty_dir), str(good)], ExitCode.BAD_INPUT, "no verdict.json"),
        (["compare", str(bad_verdict_dir), str(good)], ExitCode.BAD_INPUT, "not valid JSON"),
        (["compare", str(good), str(traversal)], ExitCode.BAD_INPUT, "path traversal"),
        (["bundle", str(tmp / "norun")], ExitCode.BAD_INPUT, "run directory not found"),
        (["bundle", str(empty_dir)], ExitCode.BAD_INPUT, "no verdict.json"),
        (["compare", str(good), str(good), "--plcc-tol", "-0.1"], ExitCode.BAD_INPUT, "--plcc-tol"),
    ]


def test_bad_input_battery(tmp_path, good_bundle):
    cases = _cases(tmp_path, good_bundle)
    failures = []
    for argv, code, phrase in cases:
        result, text = _invoke(*argv)
        if result.exit_code != code or phrase not in text:
            failures.append(f"{argv}: exit {result.exit_code} (want {int(code)}), output {text!r}")
            continue
        _one_error_line(text)
    assert not failures, "\n".join(failures)
    assert len(cases) >= 15


def test_hostile_bundle_writes_nothing_outside(tmp_path):
    evil = _hostile_tar(tmp_path / "t.tar.gz", "../escaped.txt")
    _invoke("verify", str(evil))
    assert not (tmp_path / "escaped.txt").exists()
    assert not list(Path("/tmp").glob("escaped.txt"))


def _edited_copy(bundle_path: Path, out: Path, name: str, edit) -> Path:
    """A copy of the bundle with one JSON member changed by `edit(doc)` (manifest not rehashed)."""
    return edited(bundle_path, out, edit_json(name, edit))


def test_bundle_of_another_schema_version(tmp_path, good_bundle):
    future = _edited_copy(good_bundle, tmp_path / "future.tar.gz", "manifest.json",
                          lambda m: m.update(schema_version=3))
    for argv in (["verify", str(future)], ["compare", str(good_bundle), str(future)]):
        result, text = _invoke(*argv)
        assert result.exit_code == ExitCode.BAD_INPUT
        assert "bundle schema version 3" in _one_error_line(text)


def test_tampered_bundle_is_diverged_for_compare(tmp_path, good_bundle):
    """verify: bad input (2). compare: a bundle edited after bundling confirms nothing -> DIVERGED (1), reason first."""
    tampered = _edited_copy(good_bundle, tmp_path / "tampered.tar.gz", "verdict.json",
                            lambda v: v.update(verdict="HOLD"))
    result, text = _invoke("verify", str(tampered))
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "verdict.json" in _one_error_line(text) and "changed after it was made" in text
    result, text = _invoke("compare", str(good_bundle), str(tampered))
    assert result.exit_code == ExitCode.HOLD
    lines = text.splitlines()
    assert lines[0].startswith("DIVERGED: lead PROMOTE, collaborator tampered")
    assert lines[1].startswith("  reason: the collaborator's bundle fails verification:") and "verdict.json" in lines[1]


def test_pipeline_bad_input_battery(tmp_path):
    """Broken pipeline inputs: each one line naming the flag/file, exit 2 (or 3 for a missing prerequisite)."""
    empty_refs = tmp_path / "empty_refs"
    empty_refs.mkdir()
    bad_refs = tmp_path / "bad_refs"
    bad_refs.mkdir()
    (bad_refs / "clip.y4m").write_bytes(os.urandom(2048))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    two_refs = tmp_path / "two_refs"
    two_refs.mkdir()
    import imageio_ffmpeg

    for i, graph in enumerate(("testsrc2=s=64x64:r=25", "mandelbrot=s=64x64:r=25")):
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", graph, "-frames:v", "2",
                        "-pix_fmt", "yuv420p", str(two_refs / f"c{i}.y4m")], check=True)
    out = ["--out-dir", str(tmp_path / "out")]
    cases = [
        (["--ref-dir", str(tmp_path / "nope"), *out], ExitCode.BAD_INPUT, "nope"),
        (["--ref-dir", str(empty_refs), *out], ExitCode.BAD_INPUT, "holds no reference clips"),
        (["--ref-dir", str(bad_refs), *out], ExitCode.BAD_INPUT, "clip.y4m"),
        (["--cqs", "abc", *out], ExitCode.BAD_INPUT, "--cqs"),
        (["--cqs", "99", "--encoders", "libx264", *out], ExitCode.BAD_INPUT, "outside libx264's range"),
        (["--seeds", "x", *out], ExitCode.BAD_INPUT, "--seeds"),
        (["--encoders", "nosuch", *out], ExitCode.BAD_INPUT, "unknown encoder 'nosuch'"),
        (["--out-dir", str(a_file)], ExitCode.BAD_INPUT, "is a file"),
        (["--demo", "--ref-dir", str(empty_refs), *out], ExitCode.BAD_INPUT, "mutually exclusive"),
        (["--demo-size", "10x10", *out], ExitCode.BAD_INPUT, "--demo-size"),
        (["--epochs", "0", *out], ExitCode.BAD_INPUT, "--epochs"),
        (["--encoders", "h264_nvenc", *out], ExitCode.PREREQS, "h264_nvenc"),
        (["--ref-dir", str(two_refs), "--encoders", "libx264", *out], ExitCode.BAD_INPUT, "needs at least 3"),
    ]
    failures = []
    for argv, code, phrase in cases:
        result, text = _invoke("pipeline", *argv)
        if result.exit_code != code or phrase not in text:
            failures.append(f"{argv}: exit {result.exit_code} (want {int(code)}), output {text!r}")
            continue
        _one_error_line(text)
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "out" / "run.json").exists()  # nothing started on bad input


def test_train_and_merge_refuse_broken_bundles(tmp_path, good_bundle):
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(os.urandom(1024))
    traversal = _hostile_tar(tmp_path / "traversal.tar.gz", "../evil.txt")
    for argv, phrase in (
        (["train", "--corpus", str(garbage), "--out-dir", str(tmp_path / "t")], "not a readable tar archive"),
        (["train", "--corpus", str(traversal), "--out-dir", str(tmp_path / "t")], "path traversal"),
        (["merge", str(good_bundle), str(garbage), "--out", str(tmp_path / "m.parquet")], "not a readable tar archive"),
    ):
        result, text = _invoke(*argv)
        assert result.exit_code == ExitCode.BAD_INPUT, (argv, text)
        assert phrase in _one_error_line(text)
    assert not (tmp_path / "evil.txt").exists()


# ---- issue 11: every awkward value a user can type or a file can hold is exit 2, one line, no crash -----

def _unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process cannot write into: chmod for a normal user; root ignores modes, so for root a
    kernel folder that refuses new entries (/sys/kernel) stands in for a read-only disk."""
    if os.geteuid() != 0:
        ro = tmp_path / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    ro = Path("/sys/kernel")
    try:
        (ro / "ekit-probe").mkdir()
    except OSError:
        return ro
    pytest.skip("running as root with a writable /sys: no read-only folder to test with")


@pytest.fixture(scope="module")
def synthetic_parquet(tmp_path_factory) -> Path:
    from kit.train.synthetic import synthetic_corpus

    path = tmp_path_factory.mktemp("synthetic") / "corpus.parquet"
    synthetic_corpus(n_sources=3, frames=4, encoders=("libx264",), cqs=(20, 40)).to_parquet(path, index=False)
    return path


def _edge_cases(tmp: Path, refs: Path, corpus: Path, good: Path, fake_run) -> list[tuple[list[str], dict, str]]:
    """(argv, environment, a phrase the one-line message must contain): each must exit 2."""
    ro = _unwritable_dir(tmp)
    a_file = tmp / "a_file"
    a_file.write_text("x")
    long_name = tmp / ("n" * 300)
    refs_args = ["corpus", "--ref-dir", str(refs), "--encoders", "libx264", "--cqs", "30"]
    # a Y4M whose header says W-96
    bad_y4m = tmp / "bad_header"
    bad_y4m.mkdir()
    (bad_y4m / "neg.y4m").write_bytes(b"YUV4MPEG2 W-96 H48 F25:1 C420jpeg\nFRAME\n" + bytes(96 * 48 * 3 // 2))
    # a 175x143 yuv420p clip: 4:2:0 encoders cannot take odd sizes
    odd = tmp / "odd"
    odd.mkdir()
    (odd / "odd_175x143_25fps.yuv").write_bytes(bytes(2 * (175 * 143 + 2 * 88 * 72)))
    # a raw clip whose name states two frame sizes, and no flag or sidecar to settle it
    two_sizes = tmp / "two_sizes"
    two_sizes.mkdir()
    (two_sizes / "clip_64x96_from_96x64_25fps.yuv").write_bytes(bytes(2 * 96 * 64 * 3 // 2))
    # a geometry sidecar nested 100k deep, a verdict.json nested 100k deep
    deep = "[" * 100_000 + "]" * 100_000
    deep_refs = tmp / "deep_refs"
    deep_refs.mkdir()
    (deep_refs / "clip.yuv").write_bytes(bytes(64 * 48 * 3 // 2))
    (deep_refs / "clip.json").write_text(deep)
    deep_run = fake_run(tmp / "deep_run")
    (deep_run / "verdict.json").write_text(deep)
    # a verdict.json that is a symbolic link to a file elsewhere
    linked_run = fake_run(tmp / "linked_run")
    elsewhere = tmp / "elsewhere.json"
    (linked_run / "verdict.json").rename(elsewhere)
    (linked_run / "verdict.json").symlink_to(elsewhere)
    # a parquet corpus whose cq column holds strings
    import pandas as pd

    df = pd.read_parquet(corpus)
    df["cq"] = df["cq"].astype(str)
    df.loc[0, "cq"] = "twenty"
    string_cqs = tmp / "string_cqs.parquet"
    df.to_parquet(string_cqs, index=False)
    # a parquet corpus with a row whose encoder is null (sorting the encoders raised TypeError: exit 4)
    df = pd.read_parquet(corpus)
    df.loc[0, "encoder"] = None
    null_encoder = tmp / "null_encoder.parquet"
    df.to_parquet(null_encoder, index=False)
    # a finite but absurd feature: the scaler's std overflowed and that fold trained to a NaN PLCC (exit 0)
    df = pd.read_parquet(corpus)
    df.loc[0, "vif_scale0"] = 1e308
    huge_feature = tmp / "huge_feature.parquet"
    df.to_parquet(huge_feature, index=False)
    manifest_list = _edited_copy(good, tmp / "verdict_list.tar.gz", "manifest.json",
                                 lambda m: m.update(verdict=["PROMOTE"]))
    ro_home = {"HOME": str(ro), "XDG_CACHE_HOME": None, "ENSEMBLE_KIT_CACHE": None}
    return [
        *[([*refs_args, "--fps", v, "--out-dir", str(tmp / "o")], {}, "--fps") for v in ("nan", "inf", "0", "-25")],
        (["score", str(refs / "tsrc.y4m"), str(refs / "tsrc.y4m"), "--fps", "nan"], {}, "--fps"),
        (["refs", "pack", "--ref-dir", str(refs), "--out", str(tmp / "p"), "--fps", "0"], {}, "--fps"),
        (["corpus", "--ref-dir", str(bad_y4m), "--encoders", "libx264", "--out-dir", str(tmp / "o")], {}, "W-96"),
        (["corpus", "--ref-dir", str(odd), "--encoders", "libx264", "--out-dir", str(tmp / "o")], {}, "175x143"),
        (["corpus", "--ref-dir", str(deep_refs), "--encoders", "libx264", "--out-dir", str(tmp / "o")], {},
         "nested too deeply"),
        (["corpus", "--ref-dir", str(two_sizes), "--encoders", "libx264", "--out-dir", str(tmp / "o")], {},
         "two frame sizes (64x96 and 96x64)"),
        ([*refs_args, "--cell-timeout", "0", "--out-dir", str(tmp / "o")], {}, "--cell-timeout"),
        ([*refs_args[:-4], "--encoders", "", "--out-dir", str(tmp / "o")], {}, "--encoders '' is empty"),
        ([*refs_args[:-2], "--cqs", "", "--out-dir", str(tmp / "o")], {}, "--cqs '' is empty"),
        ([*refs_args[:-2], "--cqs", "22.7", "--out-dir", str(tmp / "o")], {}, "--cqs"),
        ([*refs_args, "--jobs", "0", "--out-dir", str(tmp / "o")], {}, "--jobs"),
        ([*refs_args, "--out-dir", str(long_name)], {}, "too long"),
        (["corpus", "--demo", "--demo-size", "20000x20000", "--out-dir", str(tmp / "o")], {}, "--demo-size"),
        (["corpus", "--demo", "--encoders", "libx264", "--out-dir", str(tmp / "o")], ro_home, "ENSEMBLE_KIT_CACHE"),
        (["pipeline", "--gate-mean-plcc", "nan", "--out-dir", str(tmp / "o")], {}, "--gate-mean-plcc"),
        (["pipeline", "--seeds", "99999999999999999999", "--out-dir", str(tmp / "o")], {}, "--seeds"),
        (["pipeline", "--demo-size", "20000x20000", "--out-dir", str(tmp / "o")], {}, "--demo-size"),
        (["verdict", "--out-dir", str(tmp / "o"), "--mean-plcc", "nan"], {}, "--mean-plcc"),
        (["train", "--corpus", str(corpus), "--seeds", "99999999999999999999", "--out-dir", str(tmp / "t")], {},
         "--seeds"),
        (["train", "--corpus", str(corpus), "--seeds", "0-100000", "--out-dir", str(tmp / "t")], {}, "--seeds"),
        (["train", "--corpus", str(corpus), "--batch-size", "100000000", "--out-dir", str(tmp / "t")], {},
         "--max-memory"),
        (["train", "--corpus", str(corpus), "--eps", "nan", "--out-dir", str(tmp / "t")], {}, "--eps"),
        (["train", "--corpus", str(string_cqs), "--out-dir", str(tmp / "t")], {}, "column cq must hold integers"),
        (["train", "--corpus", str(corpus), "--out-dir", str(a_file)], {}, "is a file"),
        (["train", "--corpus", str(corpus), "--out-dir", str(ro / "t")], {}, "not writable"),
        (["train", "--corpus", str(corpus), "--out-dir", str(long_name)], {}, "too long"),
        (["merge", str(corpus), "--out", str(a_file / "m.parquet")], {}, "a_file"),
        (["merge", str(corpus), "--out", str(ro / "m.parquet")], {}, str(ro)),
        (["merge", str(string_cqs), "--out", str(tmp / "m.parquet")], {}, "column cq must hold integers"),
        (["train", "--corpus", str(null_encoder), "--out-dir", str(tmp / "t")], {}, "row 0: encoder is null, not a non-empty string"),
        (["merge", str(null_encoder), "--out", str(tmp / "m.parquet")], {}, "row 0: encoder is null, not a non-empty string"),
        (["train", "--corpus", str(huge_feature), "--out-dir", str(tmp / "t_huge")], {},
         "row 0: vif_scale0 is 1e+308, outside 0..15"),
        (["bundle", str(fake_run(tmp / "run_for_out")), "--out", str(a_file / "b.tar.gz")], {}, "a_file"),
        (["bundle", str(fake_run(tmp / "run_for_ro")), "--out", str(ro) + "/"], {}, str(ro)),
        (["bundle", str(linked_run)], {}, "symbolic link"),
        (["bundle", str(deep_run)], {}, "nested too deeply"),
        (["verify", str(manifest_list)], {}, "no verdict summary"),
        (["dist", "--with-wheels", "windows-64"], {}, "--with-wheels"),
    ]


def test_awkward_values_battery(tmp_path, tiny_refs, synthetic_parquet, good_bundle, fake_run):
    """Issue 11's list: each is exit 2 with one line naming the input, never an internal error or a traceback."""
    cases = _edge_cases(tmp_path, tiny_refs, synthetic_parquet, good_bundle, fake_run)
    failures = []
    for argv, env, phrase in cases:
        result = CliRunner().invoke(main, argv, env=env)
        text = result.output
        if result.exit_code != ExitCode.BAD_INPUT or phrase not in text or "Traceback" in text \
                or "internal error" in text:
            failures.append(f"{argv[:3]}...: exit {result.exit_code}, want 2 and {phrase!r}: {text[-400:]!r}")
            continue
        try:
            _one_error_line(text)
        except AssertionError:
            failures.append(f"{argv[:3]}...: not one error line: {text!r}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "o" / "corpus" / "cells").is_dir() or not any((tmp_path / "o" / "corpus" / "cells").glob("*.parquet"))


def test_a_read_only_home_shows_only_the_kits_own_lines(tmp_path, tiny_pipeline_args):
    """`pipeline --demo` with a read-only HOME: matplotlib and onnxruntime used to print their own warnings
    about it first. Now: without a cache, only the kit's one error line; with ENSEMBLE_KIT_CACHE, a clean
    run (nothing on stderr with --quiet) whose matplotlib files stay in that cache."""
    import sys

    ro = _unwritable_dir(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "ENSEMBLE_KIT_CACHE", "MPLCONFIGDIR", "ORT_DISABLE_TELEMETRY")}
    env.update(HOME=str(ro), TMPDIR=str(tmp_path / "tmp"), CI="true")
    (tmp_path / "tmp").mkdir()
    kit = [sys.executable, "-c", "from kit.cli import main; main()", "pipeline", "--demo", *tiny_pipeline_args, "--quiet"]
    done = subprocess.run([*kit, "--out-dir", str(tmp_path / "a")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert done.stderr.splitlines() == [_one_error_line(done.stderr)] and "ENSEMBLE_KIT_CACHE" in done.stderr, done.stderr
    assert not list((tmp_path / "tmp").iterdir())  # the temp matplotlib folder went with the process

    env["ENSEMBLE_KIT_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run([*kit, "--out-dir", str(tmp_path / "b")], env=env, capture_output=True, text=True, timeout=600)
    assert (done.returncode, done.stderr) == (ExitCode.OK, ""), done.stderr
    assert done.stdout.startswith("PROMOTE ")
    assert (tmp_path / "cache" / "matplotlib").is_dir()


def test_onnxruntime_says_nothing_about_a_read_only_home(tmp_path):
    """onnxruntime prints a coloured warning at import when it cannot persist its telemetry id under ~/.cache."""
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "ORT_DISABLE_TELEMETRY", "MPLCONFIGDIR")}
    env.update(HOME=str(_unwritable_dir(tmp_path)), TMPDIR=str(tmp_path))
    code = "from kit.env import homes; print(sorted(homes.settle(None))); import onnxruntime"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.strip() == "['MPLCONFIGDIR', 'ORT_DISABLE_TELEMETRY']"
    # a writable home is left alone: nothing set
    env["HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr
