"""The hostile-bundle battery: bundles a hostile sender would mail, built here, each refused the same way.

Each case: exit 2, ONE `error:` line that names the entry (no control character in it), nothing read
outside the extraction root (a FIFO tripwire: anything that opened it for reading would block, and the
watchdog sees it), nothing written outside, and nothing left in the temp dir.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from bundle_edit import edit_json, edited, unpack
from click.testing import CliRunner

from kit.cli import main
from kit.core.errors import ExitCode
from kit.core.fsio import sha256_file
from kit.results import bundle, contract

ESC = "\x1b"


class Tripwire:
    """A FIFO outside the bundle. Opening it for reading blocks until a writer comes, so a watchdog that
    keeps trying to open it for writing (non-blocking) sees every reader, releases it and records it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.readers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody has it open for reading
                time.sleep(0.01)
                continue
            self.readers += 1
            os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def outside(tmp_path):
    """A folder beside the extraction temp dir: a FIFO tripwire and a sentinel file with a known hash."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "sentinel.txt").write_text("secret\n")
    wire = Tripwire(d / "fifo")
    yield d, wire
    wire.close()
    assert wire.readers == 0, "something opened the FIFO outside the bundle for reading"


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """The temp dir the kit extracts into: must be empty again after every case."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.fixture
def good(tmp_path, fake_run) -> Path:
    return bundle.make_bundle(fake_run(tmp_path / "run", models=True)).path


@pytest.fixture
def hold(tmp_path, fake_run) -> Path:
    return bundle.make_bundle(fake_run(tmp_path / "hold", verdict="HOLD", plcc=0.96)).path


def _refused(argv: list[str], names: str, temp_dir: Path) -> str:
    """Run the CLI; assert exit 2 and one escaped error line naming `names`, nothing new in the temp dir;
    -> that line."""
    before = sorted(temp_dir.iterdir())  # e.g. torch's own cache from building the fixture's models
    result = CliRunner().invoke(main, argv)
    text = result.output
    assert result.exit_code == ExitCode.BAD_INPUT, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert ESC not in text and "\r" not in text, repr(text)
    assert names in lines[0], (names, lines[0])
    assert sorted(temp_dir.iterdir()) == before, list(temp_dir.rglob("*"))
    return lines[0]


def _manifest(good: Path) -> tuple[str, dict]:
    with tarfile.open(good) as tf:
        first = tf.next()
        return first.name.split("/")[0], json.loads(tf.extractfile(first).read())


def _tar(path: Path, top: str, manifest: dict, members: list[tarfile.TarInfo | tuple[str, bytes]],
         *, level: int = 6) -> Path:
    """A bundle-shaped tar.gz: top/manifest.json first, then `members` as given (names are full paths)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for entry in [(f"{top}/manifest.json", json.dumps(manifest).encode()), *members]:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tf.addfile(info, io.BytesIO(entry[1]))
    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=level, mtime=0))
    return path


def _with_files(manifest: dict, files: list[dict]) -> dict:
    return {**manifest, "files": [*manifest["files"], *files]}


def _entry(path: str, data: bytes) -> dict:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _info(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_manifest_paths_outside_the_bundle_are_refused_before_anything_is_opened(tmp_path, good, outside, temp_dir):
    folder, _ = outside
    top, manifest = _manifest(good)
    sentinel = folder / "sentinel.txt"
    true_entry = {"size": sentinel.stat().st_size, "sha256": sha256_file(sentinel)}
    rel_fifo = os.path.relpath(folder / "fifo", temp_dir / "x" / top)
    cases = {
        "absolute": {"path": str(sentinel), **true_entry},  # its true size and hash: must not verify OK
        "etc": {"path": "/etc/hostname", "size": 0, "sha256": "0" * 64},
        "proc": {"path": "/proc/self/pagemap", "size": 0, "sha256": "0" * 64},  # would hang a reader
        "environ": {"path": "/proc/self/environ", "size": 0, "sha256": "0" * 64},
        "device": {"path": "/dev/zero", "size": 1, "sha256": "0" * 64},
        "fifo-abs": {"path": str(folder / "fifo"), "size": 1, "sha256": "0" * 64},
        "dotdot": {"path": rel_fifo, "size": 1, "sha256": "0" * 64},
        "dotdot-inner": {"path": "models/../../../outside/sentinel.txt", **true_entry},
        "backslash": {"path": "..\\..\\outside\\sentinel.txt", **true_entry},
        "nul": {"path": "corpus.parquet\x00.txt", "size": 1, "sha256": "0" * 64},
        "long": {"path": "a" * 300, "size": 1, "sha256": "0" * 64},
        "not-canonical": {"path": "./verdict.json", "size": 1, "sha256": "0" * 64},
        "duplicate": dict(manifest["files"][0]),
        "ansi-newline": {"path": f"evil{ESC}[31mred\nerror: fake", "size": 1, "sha256": "0" * 64},
    }
    phrases = {"absolute": "absolute path", "etc": "absolute path", "proc": "/proc/self/pagemap",
               "environ": "/proc/self/environ", "device": "/dev/zero", "fifo-abs": "absolute path",
               "dotdot": "path traversal", "dotdot-inner": "path traversal", "backslash": "backslash",
               "nul": "NUL byte", "long": "longer than", "not-canonical": "not a canonical path",
               "duplicate": "listed twice", "ansi-newline": "control or invisible character"}
    for name, extra in cases.items():
        bad = _tar(tmp_path / f"{name}.tar.gz", top, _with_files(manifest, [extra]), [])
        line = _refused(["verify", str(bad)], phrases[name], temp_dir)
        assert "manifest.json lists" in line
    # compare and train --corpus take bundles through the same door
    bad = _tar(tmp_path / "cmp.tar.gz", top, _with_files(manifest, [cases["proc"]]), [])
    _refused(["compare", str(good), str(bad)], "/proc/self/pagemap", temp_dir)
    _refused(["train", "--corpus", str(bad), "--out-dir", str(tmp_path / "t")], "/proc/self/pagemap", temp_dir)
    assert not (tmp_path / "t" / "corpus.parquet").exists()


def test_special_and_linked_members_are_refused(tmp_path, good, outside, temp_dir):
    folder, _ = outside
    top, manifest = _manifest(good)
    listed = _with_files(manifest, [{"path": "models/x.onnx", "size": 1, "sha256": "0" * 64}])
    cases = {
        "symlinked-folder": ([_info(f"{top}/models", tarfile.SYMTYPE, str(folder))], "symbolic link"),
        "symlink-file": ([_info(f"{top}/models/x.onnx", tarfile.SYMTYPE, str(folder / "fifo"))], "symbolic link"),
        "hardlink": ([_info(f"{top}/models/x.onnx", tarfile.LNKTYPE, "/etc/passwd")], "hard link"),
        "chardev": ([_info(f"{top}/models/x.onnx", tarfile.CHRTYPE)], "device file"),
        "blockdev": ([_info(f"{top}/models/x.onnx", tarfile.BLKTYPE)], "device file"),
        "fifo": ([_info(f"{top}/models/x.onnx", tarfile.FIFOTYPE)], "FIFO"),
        "outside-top": ([("elsewhere/x.onnx", b"x")], "outside the archive's top folder"),
        "absolute-member": ([("/tmp/evil.onnx", b"x")], "absolute path"),
        "ansi-member": ([(f"{top}/a{ESC}]0;pwned{ESC}\\\nb", b"x")], "control or invisible character"),
    }
    for name, (members, phrase) in cases.items():
        bad = _tar(tmp_path / f"{name}.tar.gz", top, listed, members)
        _refused(["verify", str(bad)], phrase, temp_dir)
    assert not Path("/tmp/evil.onnx").exists()


def test_manifest_and_tar_must_list_the_same_files(tmp_path, good, temp_dir):
    top, manifest = _manifest(good)
    missing = edited(good, tmp_path / "missing.tar.gz", lambda t: (t / "report" / "index.html").unlink())
    _refused(["verify", str(missing)], "report/index.html is listed in manifest.json but not in the archive", temp_dir)
    extra = edited(good, tmp_path / "extra.tar.gz", lambda t: (t / "models" / "payload.sh").write_text("rm -rf ~"))
    _refused(["verify", str(extra)], "models/payload.sh is in the archive but not in its manifest.json", temp_dir)
    # the unlisted member is refused before a byte of it is written: a big one costs nothing
    big = _tar(tmp_path / "unlisted.tar.gz", top, manifest, [(f"{top}/zeros.bin", bytes(8 << 20))])
    _refused(["verify", str(big)], "zeros.bin is in the archive but not in its manifest.json", temp_dir)


def _flip_to_promote(top: Path) -> None:
    """What the issue saw pass: a HOLD bundle whose verdict.json and manifest both say PROMOTE."""
    edit_json("verdict.json", lambda v: v.update(verdict="PROMOTE"))(top)
    edit_json("manifest.json", lambda m: m["verdict"].update(verdict="PROMOTE"))(top)


MEMBER0 = f"models/{contract.member_id(contract.PRODUCTION_NAME, 0)}.onnx"


def _swap_member(top: Path) -> None:
    (top / MEMBER0).write_bytes(b"not the model ensemble.json hashed")


def _lower_thresholds(top: Path) -> None:
    """Thresholds lowered so the numbers pass, verdict rewritten to match: the gate agrees, run.json does not."""
    def change(v: dict) -> None:
        v["gate"].update(mean_plcc_threshold=0.9, mean_plcc_pass=True, passed=True)
        v["verdict"] = "PROMOTE"
    edit_json("verdict.json", change)(top)
    edit_json("manifest.json", lambda m: m["verdict"].update(verdict="PROMOTE"))(top)


@pytest.mark.parametrize(("which", "edit", "phrases"), [
    ("hold", _flip_to_promote, ["gate-reapplied", "verdict.json says PROMOTE", "gives HOLD"]),
    ("good", _swap_member, ["members-sha256", f"{MEMBER0} has sha256"]),
    ("hold", _lower_thresholds, ["thresholds-recorded", "run.json"]),
    ("good", edit_json("verdict.json", lambda v: v["config"].update(epochs=100)), ["config-recorded", "run.json", "epochs"]),
    ("good", edit_json("run.json", lambda r: r["options"]["train"].update(lr=0.1)), ["config-recorded", "lr"]),
    ("good", edit_json("verdict.json", lambda v: v["folds"][0].update(plcc=0.5)), ["folds-per-seed", "loso/folds.csv"]),
    ("good", edit_json("verdict.json", lambda v: v["corpus"].update(sha256="a" * 64)), ["corpus-hash", "verdict.json"]),
    ("good", edit_json("models/ensemble.json", lambda e: e.update(corpus_sha256="b" * 64)),
     ["models-corpus", "models/ensemble.json declares corpus sha256"]),
    ("good", edit_json("manifest.json", lambda m: m["verdict"].update(mean_plcc=0.99)), ["manifest-agrees", "mean_plcc"]),
    ("hold", lambda top: (top / "loso" / "HOLD.json").rename(top / "loso" / "PROMOTE.json"),
     ["fork-files", "loso/PROMOTE.json beside a HOLD verdict.json"]),
    ("good", edit_json("loso/loso_seed1.json", lambda f: f.update(mean_plcc=0.999)), ["fork-files", "loso/loso_seed1.json"]),
    ("good", edit_json(f"models/{contract.member_id(contract.PRODUCTION_NAME, 1)}.json",
                       lambda side: side["gate"].update(mean_plcc_threshold=0.5)),
     ["thresholds-recorded", "its gate block is not verdict.json's gate", "members-sha256"]),
])
def test_rehashed_edits_are_caught_by_re_deriving_the_claims(request, tmp_path, temp_dir, which, edit, phrases):
    """Every edit here rehashes the manifest, so the sha256s all match: only re-derivation catches it."""
    source = request.getfixturevalue(which)
    bad = edited(source, tmp_path / "forged.tar.gz", edit, rehash_manifest=True)
    line = _refused(["verify", str(bad)], phrases[0], temp_dir)
    for phrase in phrases[1:]:
        assert phrase in line, line
    # compare: a forged bundle confirms nothing (DIVERGED, the failed check named first)
    before = sorted(temp_dir.iterdir())
    result = CliRunner().invoke(main, ["compare", str(source), str(bad)])
    assert result.exit_code == ExitCode.HOLD, result.output
    assert phrases[0] in result.output.splitlines()[1]
    assert sorted(temp_dir.iterdir()) == before


def test_bomb_is_refused_having_written_at_most_the_declared_bytes(tmp_path, good, temp_dir, monkeypatch):
    top, manifest = _manifest(good)
    zeros = bytes(64 << 20)
    declared = _with_files(manifest, [_entry("zeros.bin", zeros)])
    bomb = _tar(tmp_path / "bomb.tar.gz", top, declared, [(f"{top}/zeros.bin", zeros)], level=9)
    assert len(zeros) / bomb.stat().st_size >= 1000  # a >= 1000:1 bomb
    # The manifest lies about the size: the header's 64 MiB is refused before a byte is written.
    liar = _tar(tmp_path / "liar.tar.gz", top, _with_files(manifest, [_entry("zeros.bin", b"tiny")]),
                [(f"{top}/zeros.bin", zeros)], level=9)
    written: list[int] = []
    real_rmtree = shutil.rmtree

    def measuring_rmtree(path, *args, **kwargs):  # what the refused extraction had written, just before cleanup
        written.append(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", measuring_rmtree)
    _refused(["verify", str(bomb)], "a decompression bomb", temp_dir)
    manifest_bytes = len(json.dumps(declared).encode())
    assert written and written[-1] <= manifest_bytes  # only the manifest: not one byte of the 64 MiB
    _refused(["verify", str(liar)], "zeros.bin is 67108864 bytes in the archive, manifest.json says 4", temp_dir)
    assert written[-1] <= manifest_bytes
    # a bomb hidden after the end of the archive, or in a header, is stopped where it starts inflating
    tail = tmp_path / "tail.tar.gz"
    tail.write_bytes(good.read_bytes() + gzip.compress(zeros, compresslevel=9, mtime=0))
    _refused(["verify", str(tail)], "decompression bomb", temp_dir)


def test_names_with_terminal_escapes_never_reach_the_terminal(tmp_path, good, temp_dir):
    """A member name that would recolour the terminal and fake a second line is escaped in the error."""
    top, manifest = _manifest(good)
    name = f"report/x{ESC}[2J{ESC}[31m\r\nerror: all good\u202e.png"
    bad = _tar(tmp_path / "ansi.tar.gz", top, manifest, [(f"{top}/{name}", b"x")])
    line = _refused(["verify", str(bad)], "\\x1b[2J", temp_dir)
    assert "\\r\\n" in line and "\\u202e" in line
    result = CliRunner().invoke(main, ["compare", str(good), str(bad)])
    assert result.exit_code == ExitCode.BAD_INPUT and ESC not in result.output
    assert len(result.output.strip().splitlines()) == 1


DEEP = "[" * 100_000 + "]" * 100_000  # exhausts the parser's stack: RecursionError, not JSONDecodeError


def _append_key(name: str, key_and_value: str) -> Callable[[Path], None]:
    """An edit that adds `"key": value` (raw JSON text) at the end of top/name's object."""
    def edit(top: Path) -> None:
        text = (top / name).read_text().rstrip()
        (top / name).write_text(f"{text[:-1]}, {key_and_value}}}\n")
    return edit


def test_json_that_python_cannot_or_should_not_parse_is_refused(tmp_path, good, temp_dir):
    """Deep nesting and 5000-digit integers make json.loads raise RecursionError / plain ValueError (they
    read 'internal error', exit 4); a key given twice means one thing to Python and another to a reader
    that keeps the first value: each is one error line, exit 2, naming the file."""
    top, manifest = _manifest(good)
    text = json.dumps(manifest)[:-1] + f', "x": {DEEP}}}'  # raw text: json.dumps would recurse as deep
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(f"{top}/manifest.json")
        info.size = len(text.encode())
        tf.addfile(info, io.BytesIO(text.encode()))
    deep_manifest = tmp_path / "deep-manifest.tar.gz"
    deep_manifest.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    _refused(["verify", str(deep_manifest)], "manifest.json is not valid JSON: nested too deeply", temp_dir)
    cases = {
        "deep": (_append_key("verdict.json", f'"x": {DEEP}'), "nested too deeply"),
        "digits": (_append_key("verdict.json", '"x": ' + "9" * 5000), "4300 digits"),
        "twice": (_append_key("verdict.json", '"verdict": "HOLD"'), "key 'verdict' appears twice"),
    }
    for name, (edit, phrase) in cases.items():
        bad = edited(good, tmp_path / f"{name}.tar.gz", edit, rehash_manifest=True)
        line = _refused(["verify", str(bad)], phrase, temp_dir)
        assert "verdict.json is not valid JSON" in line
    _refused(["train", "--corpus", str(tmp_path / "digits.tar.gz"), "--out-dir", str(tmp_path / "t")],
             "4300 digits", temp_dir)
    # the same parser reads a JSONL corpus line by line
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_text(DEEP + "\n")
    _refused(["corpus", "import", str(jsonl), "--out-dir", str(tmp_path / "imp")], "deep.jsonl:1", temp_dir)


def test_files_the_bundle_never_writes_are_refused_with_look_alikes_shown(tmp_path, hold, good, temp_dir):
    """Rehashed, an added file passed every check: a `loso/PR\u041eMOTE.json` (Cyrillic O) saying PROMOTE beside the
    honest HOLD.json lists as 'PROMOTE.json' to a human, and a script rode along. verify said OK for both."""
    def look_alike(top: Path) -> None:
        text = (top / "loso" / "HOLD.json").read_text().replace('"HOLD"', '"PROMOTE"')
        (top / "loso" / "PR\u041eMOTE.json").write_text(text)

    bad = edited(hold, tmp_path / "look-alike.tar.gz", look_alike, rehash_manifest=True)
    line = _refused(["verify", str(bad)], "[run-files-only] loso/PR\\u041eMOTE.json is not a file", temp_dir)
    assert "\u041e" not in line  # the look-alike letter itself never reaches the terminal
    script = edited(good, tmp_path / "script.tar.gz", lambda top: (top / "report" / "open.sh").write_text("rm -rf ~\n"),
                    rehash_manifest=True)
    _refused(["verify", str(script)], "report/open.sh is not a file ensemble-kit bundles", temp_dir)


def test_honest_bundle_still_verifies_and_leaves_nothing(tmp_path, good, temp_dir, outside):
    result = CliRunner().invoke(main, ["verify", str(good)])
    assert result.exit_code == 0, result.output
    assert "members-sha256" in result.output and "not a signature" in result.output
    result = CliRunner().invoke(main, ["verify", str(good), "--json"])
    doc = json.loads(result.output)
    assert doc["sha256"] == sha256_file(good) and "gate-reapplied" in doc["checks"]
    assert not list(temp_dir.glob("ekit-*"))
    root = unpack(good, tmp_path / "plain")
    assert (root / "manifest.json").is_file()


@pytest.fixture
def other_run(tmp_path, fake_run) -> Path:
    """Another run with the same corpus and numbers, in another environment: its records are not the bundle's."""
    from conftest import fake_fingerprint

    return fake_run(tmp_path / "other", fingerprint=fake_fingerprint(torch="2.14.0"))


def _from_other(rel: str):
    def edit(top: Path, other: Path) -> None:
        shutil.copyfile(other / rel, top / rel)
    return edit


def _models_of_other_verdict(top: Path, other: Path) -> None:
    from kit.results import provenance

    their = provenance.verdict_id(json.loads((other / "verdict.json").read_text()))
    edit_json("models/ensemble.json", lambda e: e["inputs"].update(verdict=their))(top)


@pytest.mark.parametrize(("edit", "phrase"), [
    (_from_other("loso/summary.json"), "verdict.json (PROMOTE) was decided on other LOSO results than those now in loso"),
    (_from_other("report/inputs.json"), "report shows another verdict than verdict.json (both PROMOTE of"),
    (_models_of_other_verdict, "models were exported under another verdict than verdict.json"),
])
def test_parts_of_different_runs_are_refused_even_when_their_numbers_agree(tmp_path, good, other_run, temp_dir,
                                                                            edit, phrase):
    """Same corpus, same fold PLCCs, rehashed manifest: only the run-consistency rule (kit.results.provenance,
    what every step checks at home) sees that a part was made in another run."""
    bad = edited(good, tmp_path / "mixed.tar.gz", lambda top: edit(top, other_run), rehash_manifest=True)
    line = _refused(["verify", str(bad)], "[run-consistent]", temp_dir)
    assert phrase in line and str(temp_dir) not in line, line
    result = CliRunner().invoke(main, ["compare", str(good), str(bad)])
    assert result.exit_code == ExitCode.HOLD and "run-consistent" in result.output.splitlines()[1], result.output


def _corpus_value(column: str, value: object) -> Callable[[Path], None]:
    def edit(top: Path) -> None:
        import pandas as pd  # only this case edits a corpus

        path = top / "corpus.parquet"
        df = pd.read_parquet(path)
        df.loc[3, column] = value
        df.to_parquet(path, index=False)

    return edit


@pytest.mark.parametrize(("column", "value", "phrase"), [
    ("adm2", 1e100, "corpus.parquet: row 3: adm2 is 1e+100, outside 0..100"),  # row order kept: the streamed pass
    ("cq", 2**62, "corpus.parquet: row 3: cq is 4611686018427387904, outside"),  # order broken: the loader
    ("frame_index", -1, "corpus.parquet: row 3: frame_index is -1, outside"),
])
def test_a_bundled_corpus_row_outside_the_row_rule_is_refused(tmp_path, good, temp_dir, column, value, phrase):
    """A rehashed bundle whose corpus holds an implausible value: verify (and so train --corpus BUNDLE) names the
    row once, whichever way the corpus is read."""
    bad = edited(good, tmp_path / "rows.tar.gz", _corpus_value(column, value), rehash_manifest=True)
    line = _refused(["verify", str(bad)], phrase, temp_dir)
    assert line.count(phrase) == 1, line
    _refused(["train", "--corpus", str(bad), "--out-dir", str(tmp_path / "t")], phrase, temp_dir)
    assert not (tmp_path / "t" / "corpus.parquet").exists()
