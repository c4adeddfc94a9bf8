"""One run is one consistent thing (issue 11, item 1): every step records what it consumed, and verdict,
export, report and bundle refuse files that were not made from the same corpus and config."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import lavfi_clip

from kit.cli import main
from kit.core.errors import ExitCode
from kit.core.fsio import read_json
from kit.core.rundir import RunDir

GATE_OPEN = ["--mean-plcc", "-1", "--per-seed-min", "-1", "--spread-max", "2"]


@pytest.fixture(scope="module")
def three_refs(tmp_path_factory, kit_ffmpeg) -> Path:
    d = tmp_path_factory.mktemp("three_refs")
    for name, graph in (("a", "testsrc2"), ("b", "mandelbrot"), ("c", "smptehdbars")):
        lavfi_clip(kit_ffmpeg, f"{graph}=s=64x48:r=25", d / f"{name}.y4m", frames=6)
    return d


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result.exit_code, result.output


def _error_line(text: str) -> str:
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, text
    return errors[0]


TRAIN = ["--seeds", "0", "--epochs", "2", "--hidden", "8", "--quiet"]


def _corpus(refs: Path, out: str, cqs: str) -> list[str]:
    return ["corpus", "--ref-dir", str(refs), "--encoders", "libx264", "--cqs", cqs, "--out-dir", out, "--quiet"]


@pytest.fixture(scope="module")
def finished_run(three_refs, tmp_path_factory) -> Path:
    """corpus -> train -> verdict (PROMOTE) -> export -> report, each as its own command."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    assert _run(*_corpus(three_refs, out, "24,40"))[0] == 0
    assert _run("train", "--out-dir", out, *TRAIN)[0] == 0
    assert _run("verdict", "--out-dir", out, *GATE_OPEN)[0] == ExitCode.OK
    assert _run("export", "--out-dir", out, "--quiet")[0] == 0
    assert _run("report", "--out-dir", out)[0] == 0
    return Path(out)


@pytest.fixture
def run_copy(finished_run, tmp_path) -> str:
    shutil.copytree(finished_run, tmp_path / "run")
    return str(tmp_path / "run")


def test_a_rebuilt_corpus_is_refused_by_every_later_step(three_refs, run_copy):
    """The issue's case: a trained, verdicted, exported, reported run; then `corpus` again with another cq
    list. verdict, export, report and bundle each refuse, naming both corpora and the command to rerun."""
    out = run_copy
    code, text = _run("bundle", out)
    assert code == 0, text  # one consistent run bundles
    assert _run(*_corpus(three_refs, out, "24,32,40"))[0] == 0  # the corpus is rebuilt with another cq list
    for argv in (["verdict", "--out-dir", out, *GATE_OPEN], ["export", "--out-dir", out, "--quiet"],
                 ["report", "--out-dir", out], ["bundle", out]):
        code, text = _run(*argv)
        line = _error_line(text)
        assert code == ExitCode.BAD_INPUT, (argv, text)
        assert "was trained on corpus" in line and "(36 rows)" in line and "now holds corpus" in line, line
        assert f"rerun `ensemble-kit train --out-dir {out}`" in line, line

    # the fix the message names: retrain, then the later steps go through again
    assert _run("train", "--out-dir", out, *TRAIN)[0] == 0
    assert _run("verdict", "--out-dir", out, *GATE_OPEN)[0] == ExitCode.OK
    code, text = _run("bundle", out)  # models/ and report/ of the old verdict were moved aside by `verdict`
    assert code == 0, text
    with tarfile.open(text.strip().splitlines()[-1]) as tf:
        names = tf.getnames()
    assert not any("/models/" in n or "/report/" in n for n in names), names


def test_a_hold_never_ships_models_exported_under_an_earlier_promote(run_copy):
    out = run_copy
    rd = RunDir(Path(out))
    ensemble = read_json(rd.ensemble_json)
    assert ensemble["inputs"]["verdict_name"] == "PROMOTE"
    assert read_json(rd.verdict)["inputs"]["corpus_sha256"] == ensemble["corpus_sha256"]

    code, text = _run("verdict", "--out-dir", out, "--mean-plcc", "1.0")  # now HOLD
    assert code == ExitCode.HOLD, text
    assert "models: exported under an earlier verdict" in " ".join(text.split())
    assert not rd.models_dir.exists() and not rd.report_dir.exists()  # moved aside, not deleted
    assert list((rd.pipeline_dir / "stale").glob("models-*")) and list((rd.pipeline_dir / "stale").glob("report-*"))
    code, text = _run("bundle", out)
    assert code == 0, text
    with tarfile.open(text.strip().splitlines()[-1]) as tf:
        assert not any("/models/" in n for n in tf.getnames())

    # a verdict rewritten with the same decision keeps what was made under it
    assert _run("verdict", "--out-dir", out, "--mean-plcc", "1.0")[0] == ExitCode.HOLD
    assert _run("report", "--out-dir", out)[0] == 0
    code, text = _run("verdict", "--out-dir", out, "--mean-plcc", "1.0")
    assert code == ExitCode.HOLD and "moved to" not in text and rd.report_index.is_file()


def test_retraining_with_another_config_makes_the_verdict_stale(run_copy):
    """train again with other settings: the verdict (and what was made under it) is about the old LOSO
    results, so export, report and bundle refuse until `verdict` is rerun."""
    out = run_copy
    assert _run("train", "--out-dir", out, "--seeds", "0", "--epochs", "3", "--hidden", "8", "--quiet")[0] == 0
    for argv in (["export", "--out-dir", out, "--quiet"], ["report", "--out-dir", out], ["bundle", out]):
        code, text = _run(*argv)
        line = _error_line(text)
        assert code == ExitCode.BAD_INPUT and "was decided on other LOSO results" in line, (argv, text)
        assert f"rerun `ensemble-kit verdict --out-dir {out}`" in line
    assert _run("verdict", "--out-dir", out, *GATE_OPEN)[0] == ExitCode.OK  # moves the old models/report aside
    assert _run("export", "--out-dir", out, "--quiet")[0] == 0
    assert _run("report", "--out-dir", out)[0] == 0
    assert _run("bundle", out)[0] == 0
