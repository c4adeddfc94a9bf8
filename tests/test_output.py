"""What reaches the terminal: untrusted text escaped (text and --json), a closed pipe is a quiet exit,
and SIGTERM while a bundle is being opened leaves nothing in the temp dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core.console import printable
from kit.core.errors import ExitCode
from kit.results import bundle

HOSTILE = "a\x1b[31mred\r\nerror: fake line\x07\x9b2J\u202eevil\u2028x\U000e0041"


def test_printable_escapes_every_control_and_keeps_ordinary_text():
    text = printable(HOSTILE)
    assert text.isprintable() and "\n" not in text
    assert text == ("a\\u001b[31mred\\u000d\\u000aerror: fake line\\u0007\\u009b2J\\u202eevil\\u2028x"
                    "\\udb40\\udc41")
    for ordinary in ("clip[b]0", "café 日本", "src_01.y4m", "[red]not markup[/red]"):
        assert printable(ordinary) == ordinary
    # the escapes are JSON escapes: inside a JSON string they decode back to the original text
    assert json.loads(f'"{printable(json.dumps(HOSTILE)[1:-1])}"') == HOSTILE


def test_compare_escapes_source_names_in_text_and_keeps_them_in_json(tmp_path, fake_run):
    names = ["clip[b]0", HOSTILE, "plain"]
    lead = fake_run(tmp_path / "lead", src_names=names)
    collab = fake_run(tmp_path / "collab", src_names=names, plcc=0.9702)
    result = CliRunner().invoke(main, ["compare", str(lead), str(collab)])
    assert result.exit_code == ExitCode.HOLD
    out = result.output
    assert "\x1b" not in out and "\r" not in out and "\x9b" not in out and "\u2028" not in out
    assert "clip[b]0" in out  # not eaten as rich markup
    assert all(line.isprintable() for line in out.splitlines())
    result = CliRunner().invoke(main, ["compare", str(lead), str(collab), "--json"])
    raw = result.output
    assert "\x1b" not in raw and "\x9b" not in raw and "\u2028" not in raw
    doc = json.loads(raw)
    assert {s["src"] for s in doc["sources"]} == set(names)  # escaped on the wire, exact once parsed


def _kit(*args: str) -> list[str]:
    return [sys.executable, "-c", "from kit.cli import main; main()", *args]


@pytest.mark.parametrize("command", [["compare", "{run}", "{run}"], ["verify", "{bundle}"],
                                     ["compare", "{run}", "{run}", "--json"]])
def test_a_closed_pipe_is_a_quiet_exit(tmp_path, fake_run, command):
    """`ensemble-kit compare a b | head -1`: the reader is gone before the first write."""
    run = fake_run(tmp_path / "run")
    made = bundle.make_bundle(run).path
    argv = [a.format(run=run, bundle=made) for a in command]
    read_end, write_end = os.pipe()
    os.close(read_end)  # head has already exited
    try:
        done = subprocess.run(_kit(*argv), stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == ExitCode.PIPE_CLOSED, done.stderr.decode()
    assert done.stderr == b""


def test_sigterm_while_a_bundle_is_extracted_leaves_nothing_in_the_temp_dir(tmp_path, fake_run):
    made = bundle.make_bundle(fake_run(tmp_path / "run")).path
    temp = tmp_path / "tmp"
    temp.mkdir()
    # Fault injection: a slow disk, so the signal lands while members are being written.
    script = ("import sys, time\n"
              "import kit.core.archive as archive\n"
              "real = archive._copy_member\n"
              "def slow(*a, **k):\n"
              "    time.sleep(0.5)\n"
              "    return real(*a, **k)\n"
              "archive._copy_member = slow\n"
              "from kit.cli import main\n"
              "main()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, "verify", str(made)], env={**os.environ, "TMPDIR": str(temp)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(temp.rglob("manifest.json")):  # the manifest is written first, then the slow members
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, (out, err)
    assert list(temp.iterdir()) == []
    assert b"Traceback" not in err


def test_error_lines_are_escaped(tmp_path):
    weird = tmp_path / f"x{chr(27)}[31m\nname.tar.gz"
    result = CliRunner().invoke(main, ["verify", str(weird)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "\x1b" not in result.output and len(result.output.strip().splitlines()) == 1
    assert "\\u001b[31m\\u000aname.tar.gz" in result.output


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["-h"], ["verdict", "--help"]])
def test_help_and_version_into_a_closed_pipe_are_the_same_quiet_exit(argv):
    """`ensemble-kit --help | head -1`: printed while the options are parsed, before any command runs
    (click's own handling used to exit 1 there); the same 141 and silence as any command."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(_kit(*argv), stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (ExitCode.PIPE_CLOSED, b""), done.stderr.decode()
    # an open pipe still gets the help and exit 0
    done = subprocess.run(_kit(*argv), capture_output=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith((b"Usage:", b"ensemble-kit, version")), done.stderr
