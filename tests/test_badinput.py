"""The bad-input battery: every broken input gets one clear line naming it, and the documented exit code.

Runs through the real CLI door (click's runner with the KitGroup), so a traceback anywhere fails here.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
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
    """Unpack a bundle, let `edit(doc)` change one JSON member, pack it again as `out`."""
    work = out.parent / f"{out.name}.work"
    with tarfile.open(bundle_path) as tf:
        tf.extractall(work, filter="data")
    (top,) = list(work.iterdir())
    doc = json.loads((top / name).read_text())
    edit(doc)
    (top / name).write_text(json.dumps(doc))
    write_reproducible_tar([(f"{top.name}/{p.relative_to(top)}", p) for p in top.rglob("*") if p.is_file()], out)
    return out


def test_bundle_of_another_schema_version(tmp_path, good_bundle):
    future = _edited_copy(good_bundle, tmp_path / "future.tar.gz", "manifest.json",
                          lambda m: m.update(schema_version=2))
    for argv in (["verify", str(future)], ["compare", str(good_bundle), str(future)]):
        result, text = _invoke(*argv)
        assert result.exit_code == ExitCode.BAD_INPUT
        assert "bundle schema version 2" in _one_error_line(text)


def test_tampered_bundle_is_diverged_for_compare(tmp_path, good_bundle):
    """verify: bad input (2). compare: a bundle edited after bundling confirms nothing -> DIVERGED (1), reason first."""
    tampered = _edited_copy(good_bundle, tmp_path / "tampered.tar.gz", "verdict.json",
                            lambda v: v.update(verdict="HOLD"))
    result, text = _invoke("verify", str(tampered))
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "verdict.json" in _one_error_line(text) and "changed after bundling" in text
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
