"""kit.core.archive: hostile archives are refused before anything is written; the writer is byte-reproducible."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from kit.core.archive import safe_extract, write_reproducible_tar
from kit.core.errors import BadInput, ExitCode


def _tar(path: Path, entries: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _info(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def test_extracts_plain_files_and_dirs(tmp_path):
    tar = _tar(tmp_path / "ok.tar.gz", [_info("pack", tarfile.DIRTYPE), ("pack/a.txt", b"hello"),
                                        ("./pack/sub/b.bin", b"\x00\x01")])
    dest = tmp_path / "out"
    written = safe_extract(tar, dest, max_total_bytes=1000)
    assert written == [dest.resolve() / "pack/a.txt", dest.resolve() / "pack/sub/b.bin"]
    assert (dest / "pack/a.txt").read_bytes() == b"hello"
    assert (dest / "pack/sub/b.bin").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (("/etc/evil", b"x"), "absolute path"),
        (("../evil", b"x"), r"'\.\.'"),
        (("pack/../../evil", b"x"), r"'\.\.'"),
        (("pack\\..\\evil", b"x"), "backslash"),
        (_info("pack/link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (_info("pack/link", tarfile.SYMTYPE, "../../outside"), "symbolic link"),
        (_info("pack/hard", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
        (_info("pack/dev", tarfile.CHRTYPE), "device"),
        (_info("pack/blk", tarfile.BLKTYPE), "device"),
        (_info("pack/fifo", tarfile.FIFOTYPE), "FIFO"),
        (("pack/a\x1b[31m\nb", b"x"), "control or invisible character"),
        (("pack/\u202eevil", b"x"), "control or invisible character"),
        (("pack/" + "a" * 300, b"x"), "longer than 255 bytes"),
    ],
)
def test_unsafe_member_is_refused_naming_it_and_nothing_is_written(tmp_path, entry, why):
    tar = _tar(tmp_path / "bad.tar.gz", [("pack/first.txt", b"ok"), entry])
    dest = tmp_path / "out"
    name = entry.name if isinstance(entry, tarfile.TarInfo) else entry[0]
    with pytest.raises(BadInput, match=why) as exc_info:
        safe_extract(tar, dest, max_total_bytes=1 << 20)
    assert repr(name) in str(exc_info.value)
    assert exc_info.value.exit_code == ExitCode.BAD_INPUT
    assert list(dest.rglob("*")) == []  # validated before writing: not even the safe first member
    assert not (tmp_path / "evil").exists()


def test_size_bomb_is_refused_naming_the_member(tmp_path):
    # 4 MiB of zeros compresses to a few KiB: the limit is on extracted bytes, not archive bytes.
    tar = _tar(tmp_path / "bomb.tar.gz", [("small", b"x" * 10), ("zeros.bin", bytes(4 << 20))])
    assert tar.stat().st_size < 64 << 10
    with pytest.raises(BadInput, match=r"'zeros.bin'.*size limit"):
        safe_extract(tar, tmp_path / "out", max_total_bytes=1 << 20)
    assert not (tmp_path / "out" / "small").exists()


def test_duplicate_member_is_refused(tmp_path):
    tar = _tar(tmp_path / "dup.tar", [("a.txt", b"good"), ("a.txt", b"evil")], mode="w")
    with pytest.raises(BadInput, match="appears twice"):
        safe_extract(tar, tmp_path / "out", max_total_bytes=1000)


def test_preexisting_symlinked_dir_in_dest_cannot_carry_files_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "pack").symlink_to(outside)
    tar = _tar(tmp_path / "t.tar.gz", [("pack/a.txt", b"x")])
    with pytest.raises(BadInput, match="outside"):
        safe_extract(tar, dest, max_total_bytes=1000)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not a tar at all" * 100, None])
def test_corrupt_or_truncated_archive_is_bad_input_naming_the_file(tmp_path, content):
    bad = tmp_path / "broken.tar.gz"
    if content is None:  # a real archive cut in half
        good = _tar(tmp_path / "good.tar.gz", [("a.bin", os.urandom(200_000))])
        content = good.read_bytes()[: good.stat().st_size // 2]
    bad.write_bytes(content)
    with pytest.raises(BadInput, match="broken.tar.gz"):
        safe_extract(bad, tmp_path / "out", max_total_bytes=1 << 30)


def test_missing_archive_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="not found"):
        safe_extract(tmp_path / "nope.tar.gz", tmp_path / "out", max_total_bytes=1)


def _tree(root: Path) -> list[tuple[str, Path]]:
    (root / "models").mkdir(parents=True)
    (root / "models" / "m.onnx").write_bytes(b"\x08\x01onnx")
    (root / "verdict.json").write_text('{"verdict": "PROMOTE"}\n')
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o750)
    return [("verdict.json", root / "verdict.json"), ("models", root / "models"), ("bin/run.sh", script)]


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar"])
def test_reproducible_tar_same_inputs_same_bytes(tmp_path, suffix):
    members = _tree(tmp_path / "src")
    first = tmp_path / f"a{suffix}"
    write_reproducible_tar(members, first)
    # Different mtimes, different member order, a different output name: same bytes.
    time.sleep(0.01)
    for _, path in members:
        os.utime(path, (12345, 12345))
    second = tmp_path / f"other-name{suffix}"
    write_reproducible_tar(list(reversed(members)), second)
    assert first.read_bytes() == second.read_bytes()

    with tarfile.open(first) as tf:
        infos = tf.getmembers()
    assert [i.name for i in infos] == sorted(i.name for i in infos)
    assert {(i.mtime, i.uid, i.gid, i.uname, i.gname) for i in infos} == {(0, 0, 0, "", "")}
    modes = {i.name: i.mode for i in infos}
    assert modes["bin/run.sh"] == 0o755 and modes["verdict.json"] == 0o644 and modes["models"] == 0o755
    if suffix == ".tar.gz":
        header = first.read_bytes()[:10]
        assert header[4:8] == b"\x00\x00\x00\x00"  # gzip mtime 0
        assert header[3] & 0x08 == 0  # no file name recorded
        assert gzip.decompress(first.read_bytes())  # a valid gzip stream


def test_reproducible_tar_round_trips_through_safe_extract(tmp_path):
    members = _tree(tmp_path / "src")
    tar = tmp_path / "bundle.tar.gz"
    write_reproducible_tar(members, tar)
    written = safe_extract(tar, tmp_path / "out", max_total_bytes=1 << 20)
    out = (tmp_path / "out").resolve()
    assert sorted(p.relative_to(out).as_posix() for p in written) == ["bin/run.sh", "models/m.onnx", "verdict.json"]
    assert (out / "models/m.onnx").read_bytes() == b"\x08\x01onnx"
    assert (out / "bin/run.sh").stat().st_mode & 0o777 == 0o755


def test_writer_stores_symlink_content_and_refuses_dangling_links(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text("content")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    tar = tmp_path / "t.tar"
    write_reproducible_tar([("link.txt", link)], tar)
    with tarfile.open(tar) as tf:
        (info,) = tf.getmembers()
        assert info.isreg() and tf.extractfile(info).read() == b"content"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    with pytest.raises(BadInput, match="dangling"):
        write_reproducible_tar([("d", dangling)], tmp_path / "u.tar")
    assert not (tmp_path / "u.tar").exists()


def test_writer_refuses_names_it_would_refuse_to_extract(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    for name in ("/abs", "../up", "a/../../b"):
        with pytest.raises(BadInput):
            write_reproducible_tar([(name, f)], tmp_path / "x.tar.gz")


def test_a_pax_header_bomb_is_stopped_where_it_starts_inflating(tmp_path):
    """A 64 MiB PAX header (zeros compress ~1000:1) would be read whole into memory by tarfile: bounded first."""
    info = tarfile.TarInfo("pack/a.txt")
    info.size = 1
    info.pax_headers = {"comment": "x" * (64 << 20)}
    tar = _tar(tmp_path / "pax.tar.gz", [], mode="w:gz")
    with tarfile.open(tar, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b"x"))
    assert tar.stat().st_size < 1 << 20
    with pytest.raises(BadInput, match="decompression bomb"):
        safe_extract(tar, tmp_path / "out", max_total_bytes=1 << 20)
    assert not (tmp_path / "out" / "pack").exists()
