"""Results bundle: only this run's files, reproducible bytes, verification, compare."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from bundle_edit import edited
from click.testing import CliRunner
from conftest import fake_fingerprint

from kit.cli import main
from kit.core.errors import BadInput
from kit.core.fsio import read_json, write_json
from kit.results import bundle, compare, contract


def _tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        return sorted(m.name for m in tf.getmembers() if m.isfile())


def test_bundle_holds_only_this_runs_files(tmp_path, fake_run):
    run = fake_run(tmp_path / "run", seeds=(0, 1))
    # Leftovers from earlier runs in the same directory: must not ride along.
    (run / "loso" / "seed7").mkdir()
    (run / "loso" / "seed7" / "predictions.parquet").write_bytes(b"old")  # a seed this run did not train
    (run / "loso" / "notes.txt").write_text("scratch")  # not a file `train` writes
    (run / "report" / "old_plot.png").write_bytes(b"old")  # not one of the report's pictures
    (run / "PROMOTE.json").write_text("{}")  # the old kit's stray verdict files
    (run / "notes.txt").write_text("private")

    result = bundle.make_bundle(run)
    assert result.path.parent == run
    assert result.path.name == "ensemble-results-linux-cpu-x86_64-0123456789ab-20261125T100000Z.tar.gz"
    stem = result.path.name.removesuffix(".tar.gz")
    names = [n.removeprefix(stem + "/") for n in _tar_names(result.path)]
    assert names == sorted([
        "corpus.parquet", "loso/PROMOTE.json", "loso/folds.csv", "loso/loso_seed0.json", "loso/loso_seed1.json",
        "loso/seed0/predictions.parquet", "loso/seed1/predictions.parquet", "loso/summary.json",
        "manifest.json", "report/fold_plcc.png", "report/index.html", "report/inputs.json", "run.json", "verdict.json",
    ])
    manifest = result.manifest
    assert [f["path"] for f in manifest["files"]] == [n for n in names if n != "manifest.json"]
    with tarfile.open(result.path) as tf:
        assert tf.next().name == f"{stem}/manifest.json"  # first: a reader checks it before anything else
    assert manifest["verdict"]["verdict"] == "PROMOTE"
    assert manifest["fingerprint"]["result_env"]["packages"]["torch"]["version"] == "2.13.0"
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in manifest["files"])


def test_models_included_only_when_they_belong_to_this_verdict(tmp_path, fake_run):
    """Models go in only when exported under this verdict from this corpus; otherwise the bundle is
    refused naming the difference (issue 11: a HOLD never ships models of an earlier PROMOTE)."""
    from kit.core.rundir import RunDir

    run = fake_run(tmp_path / "run", models=True)
    rd = RunDir(run)
    ensemble, verdict = read_json(rd.ensemble_json), read_json(rd.verdict)
    rels = [rel for rel, _ in bundle.run_files(run)]
    member = contract.member_id(contract.PRODUCTION_NAME, 0)
    assert {"models/ensemble.json", f"models/{member}.onnx", f"models/{member}.json"} <= set(rels)
    assert bundle.verify(bundle.make_bundle(run).path).n_files == len(rels)
    (run / "models" / f"{member}.onnx").write_bytes(b"changed")  # no longer what ensemble.json hashed
    with pytest.raises(BadInput, match="sha256 differs"):
        bundle.run_files(run)
    write_json(rd.ensemble_json, {**ensemble, "corpus_sha256": "d" * 64})
    with pytest.raises(BadInput, match="exported from corpus dddddddddddd"):
        bundle.run_files(run)
    write_json(rd.verdict, {**verdict, "verdict": "HOLD"})  # a new decision on the same LOSO results
    write_json(rd.ensemble_json, ensemble)
    with pytest.raises(BadInput, match="exported under verdict PROMOTE of 2026-11-25T10:15:00Z, but verdict.json "
                                       "is now HOLD") as caught:
        bundle.run_files(run)
    assert "a HOLD ships no models" in str(caught.value)

def test_same_run_gives_same_bytes(tmp_path, fake_run):
    run = fake_run(tmp_path / "run")
    (tmp_path / "a").mkdir()
    first = bundle.make_bundle(run, tmp_path / "a")  # into a folder elsewhere
    second = bundle.make_bundle(run)  # into the run dir: the earlier bundle there is not an input
    third = bundle.make_bundle(run)
    assert first.path.name == second.path.name == third.path.name
    assert first.sha256 == second.sha256 == third.sha256
    with tarfile.open(second.path) as tf:
        for m in tf.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")


def test_verify_accepts_a_good_bundle_and_reports_its_hash(tmp_path, fake_run):
    run = fake_run(tmp_path / "run")
    made = bundle.make_bundle(run)
    result = bundle.verify(made.path)
    assert result.sha256 == made.sha256
    assert result.n_files == len(made.manifest["files"])
    r = CliRunner().invoke(main, ["verify", str(made.path)])
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"OK {made.path}") and made.sha256 in r.output


def _repack(bundle_path: Path, tmp_path: Path, edit) -> Path:
    """Unpack a bundle, let `edit(root)` change it, pack it again (a tampered copy, manifest not rehashed)."""
    return edited(bundle_path, tmp_path / f"tampered-{bundle_path.name}", edit)


def _edit_verdict_plcc(top: Path) -> None:
    """Same size, different content: only the sha256 can catch it."""
    text = (top / "verdict.json").read_text()
    assert '"plcc": 0.971' in text
    (top / "verdict.json").write_text(text.replace('"plcc": 0.971', '"plcc": 0.991', 1))


def _grow_verdict(top: Path) -> None:
    v = read_json(top / "verdict.json")
    v["verdict"] = "PROMOTE!"
    write_json(top / "verdict.json", v)


@pytest.mark.parametrize(("edit", "message"), [
    (_edit_verdict_plcc, "verdict.json sha256 .* differs from manifest.json's"),
    (_grow_verdict, "verdict.json is .* bytes in the archive, manifest.json says"),
    (lambda top: (top / "corpus.parquet").unlink(), "corpus.parquet is listed in manifest.json but not in the archive"),
    (lambda top: (top / "extra.sh").write_text("rm -rf ~"), "extra.sh is in the archive but not in its manifest.json"),
    (lambda top: (top / "manifest.json").unlink(), "not an ensemble-kit results bundle .*not manifest.json"),
])
def test_verify_rejects_a_tampered_bundle(tmp_path, fake_run, edit, message):
    made = bundle.make_bundle(fake_run(tmp_path / "run"))
    bad = _repack(made.path, tmp_path, edit)
    with pytest.raises(BadInput, match=message):
        bundle.verify(bad)
    r = CliRunner().invoke(main, ["verify", str(bad)])
    assert r.exit_code == 2
    assert "Traceback" not in r.output


def test_verify_rejects_another_schema_version(tmp_path, fake_run):
    made = bundle.make_bundle(fake_run(tmp_path / "run"))

    def bump(top: Path) -> None:
        m = json.loads((top / "manifest.json").read_text())
        m["schema_version"] = 99
        (top / "manifest.json").write_text(json.dumps(m))

    bad = _repack(made.path, tmp_path, bump)
    with pytest.raises(BadInput, match="bundle schema version 99, this ensemble-kit .* reads version 2"):
        bundle.verify(bad)


def test_compare_same_run_reproduced(tmp_path, fake_run):
    run = fake_run(tmp_path / "run")
    made = bundle.make_bundle(run)
    copy = tmp_path / "copy.tar.gz"
    shutil.copy(made.path, copy)
    cmp = compare.compare(made.path, copy)
    assert cmp.reproduced and cmp.reasons == []
    assert len(cmp.per_seed) == 2 and all(s["delta"] == 0 for s in cmp.per_seed)
    assert len(cmp.per_fold) == 6
    assert [s["lead_encoders"] for s in cmp.sources] == [["libx264"]] * 3
    assert cmp.differences == {"config": [], "corpus": [], "environment": []}
    # a bundle against the run directory it came from
    assert compare.compare(run, made.path).reproduced
    r = CliRunner().invoke(main, ["compare", str(run), str(made.path)])
    assert r.exit_code == 0 and r.output.startswith("REPRODUCED"), r.output
    assert r.output.splitlines()[1:4] == ["  config: same training config, seeds and gate thresholds",
                                          f"  corpus: same corpus ({cmp.corpus_summary})",
                                          "  environment: same result environment"]
    assert "18 rows, 3 sources, 6 cells" in cmp.corpus_summary


def test_compare_diverged_reasons_first(tmp_path, fake_run):
    lead = fake_run(tmp_path / "lead", plcc=0.97)
    collab = fake_run(tmp_path / "collab", plcc=0.9702, verdict="HOLD", encoders=("libx264", "h264_nvenc"),
                      fingerprint=fake_fingerprint(torch="2.13.0+cu130", ffmpeg="n8", host_platform="linux-cuda-x86_64"))
    cmp = compare.compare(lead, collab)
    assert not cmp.reproduced
    assert cmp.reasons[0] == "verdicts differ: lead PROMOTE, collaborator HOLD"
    assert any("seed 0 mean PLCC differs by 0.0002" in r for r in cmp.reasons)
    assert any("fold PLCC(s) differ" in r for r in cmp.reasons)
    # result_env only: the torch build and ffmpeg differ; the host (another platform tag, CPU) is not compared
    assert {d["key"] for d in cmp.differences["environment"]} == {"packages.torch.version", "ffmpeg.version"}
    assert cmp.host_diffs == ["platform"]
    assert cmp.sources[0]["collab_encoders"] == ["h264_nvenc", "libx264"]
    assert [d["key"] for d in cmp.differences["config"]] == ["gate.mean_plcc"]  # the HOLD run asked for 0.999
    assert [d["key"] for d in cmp.differences["corpus"]] == ["sha256", "rows", "cells"]
    r = CliRunner().invoke(main, ["compare", str(lead), str(collab)])
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert lines[0].startswith("DIVERGED")
    # every difference class first, then the numbers
    assert [ln.split(":")[0] for ln in lines[1:6]] == ["  config", "  corpus", "  environment", "  host (recorded, not compared)",
                                                       "  reason"]
    assert "gate.mean_plcc 0.95 | 0.999" in lines[1]
    assert "cells 0 | 6 (6 cells (source x encoder x cq) shared" in lines[2]
    assert "packages.torch.version 2.13.0 | 2.13.0+cu130" in lines[3]
    assert lines[5].startswith("  reason: verdicts differ")


def test_compare_names_a_config_difference_first(tmp_path, fake_run):
    """The issue's case: two runs that differ only in training config (epochs) say so before any PLCC."""
    from kit.train.config import TrainConfig

    lead = fake_run(tmp_path / "lead", config=TrainConfig(epochs=100))
    collab = fake_run(tmp_path / "collab", config=TrainConfig(epochs=200, workers=3), plcc=0.9702)
    cmp = compare.compare(bundle.make_bundle(lead).path, bundle.make_bundle(collab).path)
    assert [(d["key"], d["lead"], d["collab"]) for d in cmp.differences["config"]] == [("epochs", 100, 200), ("workers", 0, 3)]
    assert cmp.differences["corpus"] == [] and cmp.differences["environment"] == []
    lines = compare.comparison_lines(cmp)
    assert lines[1] == "  config: differs (lead | collaborator): epochs 100 | 200; workers 0 | 3 (does not change results)"
    assert lines[2].startswith("  corpus: same corpus") and lines[3] == "  environment: same result environment"
    assert lines[4].startswith("  reason: seed 0 mean PLCC differs")


def test_compare_tolerance_is_explicit(tmp_path, fake_run):
    lead = fake_run(tmp_path / "lead", plcc=0.97)
    collab = fake_run(tmp_path / "collab", plcc=0.9702)
    assert not compare.compare(lead, collab).reproduced  # default: exact
    loose = compare.compare(lead, collab, plcc_tol=0.001)
    assert loose.reproduced, loose.reasons
    r = CliRunner().invoke(main, ["compare", str(lead), str(collab), "--plcc-tol", "0.001", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.output)["outcome"] == "REPRODUCED"
    with pytest.raises(BadInput, match="--plcc-tol"):
        compare.compare(lead, collab, plcc_tol=-1)


def test_corpus_from_accepts_file_run_dir_and_bundle(tmp_path, fake_run):
    run = fake_run(tmp_path / "run")
    made = bundle.make_bundle(run)
    assert bundle.corpus_from(run / "corpus.parquet") == run / "corpus.parquet"
    assert bundle.corpus_from(run) == run / "corpus.parquet"
    extracted = bundle.corpus_from(made.path, tmp_path / "x")
    assert extracted.read_bytes() == (run / "corpus.parquet").read_bytes()
    assert extracted.is_relative_to(tmp_path / "x")
    with pytest.raises(BadInput, match="corpus not found"):
        bundle.corpus_from(tmp_path / "nope")


def test_merge_accepts_bundles(tmp_path, fake_run):
    import pandas as pd

    lead = bundle.make_bundle(fake_run(tmp_path / "lead")).path
    collab = bundle.make_bundle(fake_run(tmp_path / "collab", encoders=("libx264", "h264_nvenc"))).path
    out = tmp_path / "merged.parquet"
    r = CliRunner().invoke(main, ["merge", str(lead), str(collab), "--out", str(out)])
    assert r.exit_code == 0, r.output
    merged = pd.read_parquet(out)
    assert len(merged) == 3 * 2 * 2 * 3  # libx264 rows shared, h264_nvenc rows added
    assert set(merged["encoder"]) == {"libx264", "h264_nvenc"}
    assert set(merged["box_id"]) == {"box0"}


def test_verify_bounds_the_extracted_size(tmp_path, fake_run):
    made = bundle.make_bundle(fake_run(tmp_path / "run"))
    with pytest.raises(BadInput, match="over the limit of 1000 bytes"):
        bundle.verify(made.path, max_total_bytes=1000)
    r = CliRunner().invoke(main, ["verify", str(made.path), "--max-bytes", "1000"])
    assert r.exit_code == 2 and "over the limit" in r.output
