"""Reference packs: lossless round trip (8/10-bit, 4:2:0/4:2:2/4:4:4), verification, corruption, resume."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core.errors import BadInput, ExitCode
from kit.core.fsio import sha256_file
from kit.corpus.ffmpeg import find_ffmpeg
from kit.corpus.sources import discover, open_source, raw_rekeyer
from kit.refs import manifest as refs_manifest
from kit.refs import pack as refs_pack
from kit.refs import unpack as refs_unpack
from kit.refs import verify as refs_verify

B10 = "b420p10_64x48_30fps_yuv420p10le"
# source name (the file stem) -> (file name written into the reference dir, pix_fmt); 64x48, 5 frames each.
CLIPS = {
    "a420": ("a420.y4m", "yuv420p"),
    B10: (f"{B10}.yuv", "yuv420p10le"),  # geometry from the name
    "c444": ("c444.y4m", "yuv444p"),
    "d444p10": ("d444p10.yuv", "yuv444p10le"),  # geometry from a sidecar
    "e422": ("e422.y4m", "yuv422p"),
    "f264": ("f264.mp4", "yuv420p"),  # a container: decoded frames are the reference
    "gfull": ("gfull.y4m", "yuv420p"),  # full range (XCOLORRANGE=FULL): FFV1 must not range-convert it
}


@pytest.fixture(scope="module")
def ff():
    return find_ffmpeg(require_libvmaf=False)


def _lavfi(ff, out: Path, pix_fmt: str, *extra: str, pattern: str = "testsrc2") -> None:
    subprocess.run([str(ff.path), "-nostdin", "-v", "error", "-y", "-f", "lavfi",
                    "-i", f"{pattern}=size=64x48:rate=30", "-frames:v", "5", "-pix_fmt", pix_fmt, *extra,
                    str(out)], check=True)


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory, ff) -> Path:
    d = tmp_path_factory.mktemp("refs-src")
    for name, (file, pix_fmt) in CLIPS.items():
        path = d / file
        if file.endswith(".yuv"):
            _lavfi(ff, path, pix_fmt, "-f", "rawvideo")
        elif name == "gfull":
            _lavfi(ff, path, pix_fmt, "-strict", "-1", pattern="zoneplate")
            assert b"XCOLORRANGE=FULL" in path.read_bytes()[:100]
        elif file.endswith(".mp4"):
            _lavfi(ff, path, pix_fmt, "-c:v", "libx264", "-crf", "30", pattern="mandelbrot")
        else:
            _lavfi(ff, path, pix_fmt, "-strict", "-1")
        if name == "d444p10":
            (d / "d444p10.json").write_text(json.dumps({"width": 64, "height": 48, "pix_fmt": pix_fmt, "fps": 30}))
    return d


def _raw_frames(ff, path: Path, pix_fmt: str) -> bytes:
    """The reference frames, decoded independently of kit.refs."""
    if path.suffix == ".yuv":
        return path.read_bytes()
    return subprocess.run([str(ff.path), "-nostdin", "-v", "error", "-i", str(path), "-f", "rawvideo",
                           "-pix_fmt", pix_fmt, "-"], check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory, ref_dir, ff) -> Path:
    out = tmp_path_factory.mktemp("pack") / "pack"
    refs_pack.pack(ref_dir, out, ff=ff, jobs=2)
    return out


def test_pack_unpack_round_trips_every_layout_bit_exactly(pack_dir, ref_dir, ff, tmp_path):
    manifest = refs_manifest.read_manifest(pack_dir)
    assert sorted(e.name for e in manifest.sources) == sorted(CLIPS)
    assert sorted(p.name for p in pack_dir.iterdir() if p.name != refs_pack.PACK_STATE) == sorted(
        ["refs.json", "README.txt", *(f"{n}.mkv" for n in CLIPS)])
    out = tmp_path / "unpacked"
    result = refs_unpack.unpack(pack_dir, out, ff=ff, jobs=2)
    assert result.reused == 0
    for entry in manifest.sources:
        file, pix_fmt = CLIPS[entry.name]
        assert entry.pix_fmt == pix_fmt and (entry.width, entry.height, entry.n_frames) == (64, 48, 5)
        original = _raw_frames(ff, ref_dir / file, pix_fmt)
        unpacked = (out / f"{entry.name}.yuv").read_bytes()
        assert unpacked == original, entry.name
        assert hashlib.sha256(unpacked).hexdigest() == entry.raw_sha256
    # --ref-dir on the unpacked directory finds every source under its original name and geometry.
    found = {s.src: s for s in discover(out, ff=ff)}
    assert set(found) == set(CLIPS)
    for entry in manifest.sources:
        s = found[entry.name]
        assert (s.kind, s.width, s.height, s.pix_fmt, s.n_frames) == ("yuv", 64, 48, entry.pix_fmt, 5)
        assert s.fps == pytest.approx(30)
    assert (out / "refs.json").read_bytes() == (pack_dir / "refs.json").read_bytes()
    assert refs_verify.verify(out, ff=ff).ok


def test_tar_pack_is_reproducible_and_unpacks_to_y4m(ref_dir, ff, tmp_path):
    first, second = tmp_path / "a" / "refs.tar", tmp_path / "b" / "refs.tar"
    refs_pack.pack(ref_dir, first, ff=ff, jobs=2)
    refs_pack.pack(ref_dir, second, ff=ff, jobs=1)
    assert first.read_bytes() == second.read_bytes()  # same inputs, same bytes, whatever the parallelism
    assert not (tmp_path / "a" / ".refs.tar.partial").exists()
    with tarfile.open(first) as tf:
        assert sorted(tf.getnames()) == sorted(["README.txt", "refs.json", *(f"{n}.mkv" for n in CLIPS)])
    out = tmp_path / "y4m"
    refs_unpack.unpack(first, out, ff=ff, y4m=True)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["refs.json", *(f"{n}.y4m" for n in CLIPS)])  # extraction staging removed
    assert b"XCOLORRANGE=FULL" in (out / "gfull.y4m").read_bytes()[:100]
    for s in discover(out, ff=ff):
        file, pix_fmt = CLIPS[s.src]
        assert s.kind == "y4m" and s.pix_fmt == pix_fmt and s.n_frames == 5
        assert _raw_frames(ff, s.path, pix_fmt) == _raw_frames(ff, ref_dir / file, pix_fmt)
    assert refs_verify.verify(out, ff=ff).ok


def test_verify_takes_a_pack_tarball_directly_or_as_refs_json(ref_dir, ff, tmp_path, monkeypatch):
    """refs issue item: `refs verify PACK.tar` and `--refs-json PACK.tar|PACKDIR`, nothing left in the temp dir."""
    tar = tmp_path / "refs.tar"
    refs_pack.pack(ref_dir, tar, ff=ff, jobs=2)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    report = refs_verify.verify(tar, ff=ff)
    assert report.ok and report.ref_dir == tar and {r.status for r in report.rows} == {"ok"}
    assert list(temp.iterdir()) == []
    copy = tmp_path / "copy"
    refs_unpack.unpack(tar, copy, ff=ff)
    (copy / "refs.json").unlink()
    assert refs_verify.verify(copy, refs_json=tar, ff=ff).ok  # refs.json read from inside the tarball
    result = CliRunner().invoke(main, ["refs", "verify", str(copy), "--refs-json", str(tar)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["refs", "verify", str(tar)])
    assert result.exit_code == 0 and result.output.count("ok ") == len(CLIPS), result.output
    (copy / "gfull.yuv").write_bytes(b"\x00" * (copy / "gfull.yuv").stat().st_size)  # same size, other frames
    result = CliRunner().invoke(main, ["refs", "verify", str(copy), "--refs-json", str(tar)])
    assert result.exit_code == 2 and "gfull.yuv (mismatch)" in result.output


@pytest.mark.parametrize("codec", ["x265-lossless", "av1-lossless"])
def test_other_lossless_codecs_round_trip_10bit_and_444(codec, ref_dir, ff, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in (B10, "d444p10", "c444"):
        shutil.copy(ref_dir / CLIPS[name][0], src / CLIPS[name][0])
    shutil.copy(ref_dir / "d444p10.json", src / "d444p10.json")
    pack = refs_pack.pack(src, tmp_path / "pack", codec=codec, ff=ff)
    assert {e.encoder for e in pack.manifest.sources} <= {"libx265", "libaom-av1", "libsvtav1"}
    out = tmp_path / "out"
    refs_unpack.unpack(tmp_path / "pack", out, ff=ff)
    for e in pack.manifest.sources:
        assert (out / f"{e.name}.yuv").read_bytes() == _raw_frames(ff, src / CLIPS[e.name][0], e.pix_fmt)


def test_corrupted_pack_member_is_named_with_exit_code_2_and_leaves_no_output(pack_dir, ff, tmp_path):
    bad_pack = tmp_path / "pack"
    shutil.copytree(pack_dir, bad_pack)
    member = bad_pack / "c444.mkv"
    data = bytearray(member.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 256] = bytes(b ^ 0x5A for b in data[mid:mid + 256])  # damage inside frame data
    member.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["refs", "unpack", str(bad_pack), "--out", str(out), "--jobs", "2"])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "c444.mkv" in result.output and "corrupt" in result.output and "Traceback" not in result.output
    assert not (out / "c444.yuv").exists()
    assert (out / "a420.yuv").is_file()  # the good members still finished

    # Same damage, but refs.json "agrees" with the damaged file: the raw-frame check still catches it.
    doc = json.loads((bad_pack / "refs.json").read_text())
    for e in doc["sources"]:
        if e["packed_file"] == "c444.mkv":
            e["packed_sha256"] = sha256_file(member)
    (bad_pack / "refs.json").write_text(json.dumps(doc))
    # (The CRC error fails it every time: FFV1's concealment can reproduce the right frames, depending on thread timing.)
    with pytest.raises(BadInput, match=r"c444\.(yuv.*do not match refs\.json.*removed|mkv.*cannot be decoded)"):
        refs_unpack.unpack(bad_pack, out, ff=ff)
    assert not (out / "c444.yuv").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_a_member_that_decodes_to_more_than_refs_json_says_is_stopped_there(pack_dir, ff, tmp_path, monkeypatch):
    """A hostile pack: a small FFV1 member of many big black frames, its packed sha256 and size rewritten
    in refs.json, its raw size left small. Decoding wrote every byte (here 27 MB for a 46 KB entry; more frames
    fills a disk) before the sizes were compared; now it stops just past what refs.json declares."""
    bad_pack = tmp_path / "pack"
    shutil.copytree(pack_dir, bad_pack)
    member = bad_pack / "c444.mkv"
    subprocess.run([str(ff.path), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "color=black:s=1280x720:r=25",
                    "-frames:v", "10", "-pix_fmt", "yuv444p", "-c:v", "ffv1", "-level", "3", str(member)], check=True)
    doc = json.loads((bad_pack / "refs.json").read_text())
    (entry,) = [e for e in doc["sources"] if e["packed_file"] == "c444.mkv"]
    entry.update(packed_sha256=sha256_file(member), packed_bytes=member.stat().st_size)
    (bad_pack / "refs.json").write_text(json.dumps(doc))
    written = [0]
    real_stream = refs_unpack.stream_sha256

    def counting_stream(argv, *, sink, what, **kwargs):  # the bytes handed on to c444's output file
        def count(chunk: bytes) -> None:
            written[0] += len(chunk) if what == "c444.mkv" else 0
            sink(chunk)
        return real_stream(argv, sink=count, what=what, **kwargs)

    monkeypatch.setattr(refs_unpack, "stream_sha256", counting_stream)
    out = tmp_path / "out"
    with pytest.raises(BadInput, match=r"c444\.mkv decodes to more than the \d+ bytes"):
        refs_unpack.unpack(bad_pack, out, ff=ff, jobs=1)
    assert not (out / "c444.yuv").exists()
    assert written[0] <= entry["raw_bytes"]  # the chunk that went past the limit was never written


def test_pack_resumes_and_a_rerun_keeps_finished_members(ref_dir, ff, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a420", "c444"):
        shutil.copy(ref_dir / CLIPS[name][0], src)
    first = refs_pack.pack(src, tmp_path / "pack", ff=ff)
    assert first.reused == 0
    again = refs_pack.pack(src, tmp_path / "pack", ff=ff)
    assert again.reused == 2 and again.manifest == first.manifest
    (src / "c444.y4m").touch()  # a changed source (mtime) is packed again
    assert refs_pack.pack(src, tmp_path / "pack", ff=ff).reused == 1


def test_unpack_resumes_without_decoding_verified_files_again(pack_dir, ff, tmp_path):
    out = tmp_path / "out"
    refs_unpack.unpack(pack_dir, out, ff=ff)
    again = refs_unpack.unpack(pack_dir, out, ff=ff)
    assert again.reused == len(CLIPS)
    damaged = out / "a420.yuv"
    damaged.write_bytes(damaged.read_bytes()[:-10])  # size/mtime change: not trusted any more
    third = refs_unpack.unpack(pack_dir, out, ff=ff)
    assert third.reused == len(CLIPS) - 1
    assert refs_verify.verify(out, ff=ff).ok


def test_verify_names_changed_and_missing_files(pack_dir, ff, tmp_path):
    out = tmp_path / "out"
    refs_unpack.unpack(pack_dir, out, ff=ff)
    raw = out / f"{B10}.yuv"
    data = bytearray(raw.read_bytes())
    data[100] ^= 0x01
    raw.write_bytes(bytes(data))
    (out / "e422.yuv").unlink()
    report = refs_verify.verify(out, ff=ff)
    problems = {(r.name, r.status) for r in report.problems()}
    assert problems == {(B10, "mismatch"), ("e422", "missing")}
    result = CliRunner().invoke(main, ["refs", "verify", str(out)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert f"{B10}.yuv" in result.output and "e422" in result.output


def test_pack_directory_itself_verifies_and_indexes_by_raw_sha(pack_dir, ref_dir, ff):
    assert refs_verify.verify(pack_dir, ff=ff).ok  # the lossless .mkv files decode to the same frames
    index = refs_manifest.raw_sha256_index(pack_dir)
    manifest = refs_manifest.read_manifest(pack_dir)
    for e in manifest.sources:
        for name in (f"{e.name}.yuv", f"{e.name}.y4m", e.packed_file, CLIPS[e.name][0]):
            assert index[name] == e.raw_sha256
    assert refs_manifest.raw_sha256_index(ref_dir) == {}  # no refs.json there


@pytest.mark.parametrize(("field", "value", "match"), [
    ("packed_file", "../../etc/passwd", "plain file name"),
    ("name", "sub/dir", "plain file name"),
    ("raw_sha256", "abc", "sha256"),
    ("width", -3, "valid int"),
    ("raw_bytes", 7, "disagrees with its geometry"),
])
def test_untrusted_refs_json_is_validated(pack_dir, tmp_path, field, value, match):
    doc = json.loads((pack_dir / "refs.json").read_text())
    doc["sources"][0][field] = value
    (tmp_path / "refs.json").write_text(json.dumps(doc))
    with pytest.raises(BadInput, match=match):
        refs_manifest.read_manifest(tmp_path)


def test_tar_pack_with_a_link_is_refused(pack_dir, ff, tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        tf.add(pack_dir / "refs.json", arcname="refs.json")
        link = tarfile.TarInfo("a420.mkv")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(BadInput, match=r"'a420.mkv'.*symbolic link"):
        refs_unpack.unpack(evil, tmp_path / "out", ff=ff)


def test_cli_pack_and_unpack(ref_dir, tmp_path):
    runner = CliRunner()
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ref_dir / "a420.y4m", src)
    r = runner.invoke(main, ["refs", "pack", "--ref-dir", str(src), "--out", str(tmp_path / "p.tar"), "--jobs", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["refs", "unpack", str(tmp_path / "p.tar"), "--out", str(tmp_path / "u")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "u" / "a420.yuv").is_file()
    r = runner.invoke(main, ["refs", "pack", "--ref-dir", str(src), "--out", str(tmp_path / "q"), "--codec", "nope"])
    assert r.exit_code == ExitCode.BAD_INPUT
    r = runner.invoke(main, ["refs", "unpack", str(tmp_path / "missing.tar"), "--out", str(tmp_path / "u")])
    assert r.exit_code == ExitCode.BAD_INPUT and "missing.tar" in r.output


def test_corpus_runs_on_the_unpacked_directory(pack_dir, tmp_path):
    """Done-when: `--ref-dir` on an unpacked pack runs the corpus (real x264 + libvmaf, 2 tiny sources)."""
    import pandas as pd

    from kit.core.rundir import RunDir
    from kit.corpus.engine import run_corpus

    ff = find_ffmpeg()  # with libvmaf
    sub = tmp_path / "pack"
    sub.mkdir()
    doc = json.loads((pack_dir / "refs.json").read_text())
    doc["sources"] = [e for e in doc["sources"] if e["name"] in ("a420", B10)]
    (sub / "refs.json").write_text(json.dumps(doc))
    for e in doc["sources"]:
        shutil.copy(pack_dir / e["packed_file"], sub)
    out = tmp_path / "refs"
    refs_unpack.unpack(sub, out, ff=ff)
    sources = discover(out, ff=ff)
    assert [s.src for s in sources] == sorted(["a420", B10])
    summary = run_corpus(RunDir(tmp_path / "run"), sources, ["libx264"], [30], ff=ff, jobs=2)
    assert summary.ok and summary.corpus_rows == 10, summary.to_json()
    df = pd.read_parquet(summary.corpus_path)
    assert sorted(df["src"].unique()) == sorted(["a420", B10])
    assert set(df["pix_fmt"]) == {"yuv420p", "yuv420p10le"}
    # Keyed by raw frames (refs.json present): the lead's rows from the original clips merge with these.
    assert dict(df.groupby("src")["src_sha256"].first()) == {e["name"]: e["raw_sha256"] for e in doc["sources"]}


def test_codec_choice_falls_back_and_explains_what_is_missing(ff):
    from dataclasses import replace

    from kit.core.errors import PrereqError

    svt_only = replace(ff, encoders=frozenset({"ffv1", "libsvtav1"}))
    assert refs_pack.choose_variant("av1-lossless", "yuv420p10le", svt_only, where="x").encoder == "libsvtav1"
    with pytest.raises(BadInput, match="cannot store yuv444p losslessly.*--codec ffv1"):
        refs_pack.choose_variant("av1-lossless", "yuv444p", svt_only, where="x")
    no_av1 = replace(ff, encoders=frozenset({"ffv1"}))
    with pytest.raises(PrereqError, match="libaom-av1 or libsvtav1"):
        refs_pack.choose_variant("av1-lossless", "yuv420p", no_av1, where="x")
    assert refs_pack.choose_variant("av1-lossless", "yuv444p", ff, where="x").encoder == "libaom-av1"


def test_raw_rekeyer_makes_y4m_yuv_and_mkv_of_the_same_frames_one_source(pack_dir, ref_dir, ff, tmp_path):
    manifest = refs_manifest.read_manifest(pack_dir).by_name()
    out = tmp_path / "y4m"
    refs_unpack.unpack(pack_dir, out, ff=ff, y4m=True)
    for d in (pack_dir, out):
        rekey = raw_rekeyer(d)
        for path in sorted(d.glob("*.mkv")) + sorted(d.glob("*.y4m")):
            s = open_source(path, ff=ff)
            assert s.src_sha256 != manifest[s.src].raw_sha256  # a file hash: .mkv / .y4m bytes are not raw frames
            assert rekey(s).src_sha256 == manifest[s.src].raw_sha256
        # ...and discover() applies it (kit.corpus.sources): the corpus keys these sources by their frames.
        assert {s.src: s.src_sha256 for s in discover(d, ff=ff)} == {n: e.raw_sha256 for n, e in manifest.items()}
    s = open_source(ref_dir / "a420.y4m", ff=ff)
    assert raw_rekeyer(ref_dir)(s) == s  # no refs.json: file hashes, as before
    # One directory holding the .y4m AND the lossless .mkv of the same frames: one source, not a name clash.
    shutil.copy(pack_dir / "a420.mkv", out / "a420.mkv")
    assert [s.src for s in discover(out, ff=ff)].count("a420") == 1
    (out / "a420.mkv").unlink()
    # A file whose geometry disagrees with refs.json keeps its own hash.
    (out / "a420.y4m").unlink()
    _lavfi(ff, out / "a420.y4m", "yuv444p", "-strict", "-1")
    s = open_source(out / "a420.y4m", ff=ff)
    assert raw_rekeyer(out)(s) == s
    assert next(d for d in discover(out, ff=ff) if d.src == "a420").src_sha256 == s.src_sha256


def test_a_pack_member_that_is_a_link_to_a_special_file_is_never_read(pack_dir, ff, tmp_path):
    """A directory pack whose member is a symlink to /proc/self/pagemap (size 0 in refs.json): refused unread."""
    bad = tmp_path / "pack"
    shutil.copytree(pack_dir, bad)
    (bad / "c444.mkv").unlink()
    (bad / "c444.mkv").symlink_to("/proc/self/pagemap")
    doc = json.loads((bad / "refs.json").read_text())
    for e in doc["sources"]:
        if e["packed_file"] == "c444.mkv":
            e["packed_bytes"] = 0
    (bad / "refs.json").write_text(json.dumps(doc))
    with pytest.raises(BadInput, match=r"c444\.mkv is corrupt"):
        refs_unpack.unpack(bad, tmp_path / "out", ff=ff, jobs=1)
