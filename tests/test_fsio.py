import json

import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core import fsio
from kit.core.errors import BadInput, ExitCode


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "a.json"
    fsio.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), fsio.atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_canonical_json_is_order_independent():
    assert fsio.canonical_json({"b": 1, "a": [1, 2]}) == fsio.canonical_json({"a": [1, 2], "b": 1})


def test_read_json_names_the_file(tmp_path):
    bad = tmp_path / "verdict.json"
    bad.write_text("{not json")
    with pytest.raises(BadInput, match="verdict.json"):
        fsio.read_json(bad, what="verdict")


def test_sha256_file_streams(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc" * 1_000_000)
    assert fsio.sha256_file(p) == fsio.sha256_bytes(b"abc" * 1_000_000)


def test_cli_version_and_unknown_command_exit_code():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "ensemble-kit" in r.output
    r = CliRunner().invoke(main, ["no-such-command"])
    assert r.exit_code == ExitCode.BAD_INPUT


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    import os
    target = tmp_path / "shared.json"
    fsio.write_json(target, {})
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
