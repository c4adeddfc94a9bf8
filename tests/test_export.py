"""Export: the fork's member layout (opset 17, features/codec_onehot -> score, no scaler inside), parity with
PyTorch through the consumer's standardise-then-feed path, both file layouts, naming on HOLD, predict, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core.errors import BadInput, WorkFailed
from kit.core.fsio import sha256_file
from kit.results import contract, export, predict
from kit.results.gate import decide
from kit.train.config import TrainConfig
from kit.train.synthetic import synthetic_corpus

CFG = TrainConfig(epochs=3, hidden=16)
NAME = contract.PRODUCTION_NAME


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return synthetic_corpus(n_sources=3, frames=6, encoders=("libx264", "hevc_videotoolbox"), cqs=(20, 35))


@pytest.fixture(scope="module")
def exported(corpus, tmp_path_factory, promote_snapshot):
    models = tmp_path_factory.mktemp("models")
    ensemble = export.export_ensemble(corpus, CFG, (0, 1, 2), promote_snapshot(), models)
    return models, ensemble


def _graph(path):
    return onnx.load(str(path), load_external_data=False)


def test_members_take_the_forks_inputs_and_are_self_contained(exported, corpus):
    models, ensemble = exported
    assert sorted(p.name for p in models.iterdir()) == sorted(
        ["ensemble.json", "registry.rows.json"] + [f"{NAME}_seed{s}.{ext}" for s in (0, 1, 2) for ext in ("onnx", "json")])
    for member in ensemble["members"]:
        path = models / member["onnx"]
        assert sha256_file(path) == member["sha256"]
        proto = _graph(path)
        onnx.checker.check_model(proto, full_check=True)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        assert {o.domain: o.version for o in proto.opset_import} == {"": 17}
        dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in [*proto.graph.input, *proto.graph.output]}
        assert dims == {"features": ["batch", 6], "codec_onehot": ["batch", 14], "score": ["batch"]}
        assert "Sub" not in {n.op_type for n in proto.graph.node}  # no scaler in the graph: the caller standardises
        sidecar = json.loads((models / member["sidecar"]).read_text())
        assert sidecar["sha256"] == member["sha256"] and sidecar["id"] == member["id"] == f"{NAME}_seed{member['seed']}"
        assert sidecar[contract.EXTRAS_KEY]["parity"]["max_abs_diff"] <= 1e-4
        assert sidecar["training_recipe"]["hidden"] == 16 and sidecar["training_recipe"]["num_codecs"] == 14
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for n in (1, 7):  # dynamic batch
            out = session.run(["score"], {"features": np.ones((n, 6), np.float32),
                                          "codec_onehot": np.zeros((n, 14), np.float32)})[0]
            assert out.shape == (n,)


def test_the_sidecar_corpus_hash_is_the_jsonl_export(exported, corpus, tmp_path):
    """corpus.sha256 names a file anyone can make: `corpus export --format jsonl` of the trained rows."""
    from kit.core.rundir import RunDir
    from kit.corpus.table import export_jsonl, write_corpus

    models, ensemble = exported
    rd = RunDir(tmp_path)
    write_corpus(corpus, rd.corpus)
    export_jsonl(rd.corpus, tmp_path / "corpus.jsonl")
    assert ensemble["corpus"]["sha256"] == sha256_file(tmp_path / "corpus.jsonl")
    assert ensemble["corpus"]["n_rows"] == len(corpus) and ensemble["corpus"]["cq_min"] == 20.0


def test_export_is_deterministic(corpus, exported, tmp_path, promote_snapshot):
    models, _ = exported
    export.export_ensemble(corpus, CFG, (0,), promote_snapshot(), tmp_path)
    assert (tmp_path / f"{NAME}_seed0.onnx").read_bytes() == (models / f"{NAME}_seed0.onnx").read_bytes()


def test_members_of_an_earlier_export_are_named_not_silently_left(corpus, tmp_path, promote_snapshot, capsys):
    """A second export under another --name left the first export's five production-id members in models/
    without a word: copying models/*.onnx into the fork's model/tiny/ shipped them too. They are kept
    (never deleted) but named."""
    export.export_ensemble(corpus, CFG, (0, 1), promote_snapshot(), tmp_path)
    capsys.readouterr()
    export.export_ensemble(corpus, CFG, (0, 1), promote_snapshot(), tmp_path, name="mine")
    err = capsys.readouterr().err
    assert f"also holds 4 file(s) an earlier export wrote ({NAME}_seed0.json, {NAME}_seed0.onnx" in err
    assert (tmp_path / f"{NAME}_seed0.onnx").is_file()
    export.export_ensemble(corpus, CFG, (0, 1), promote_snapshot(), tmp_path, name="mine")  # only the old ones
    assert "also holds 4 file(s)" in capsys.readouterr().err


def test_external_data_layout_matches_production_and_predicts_the_same(corpus, exported, tmp_path, promote_snapshot):
    models, _ = exported
    ens = export.export_ensemble(corpus, CFG, (0, 1, 2), promote_snapshot(), tmp_path, external_data=True)
    for member in ens["members"]:
        data = tmp_path / member["onnx_data"]
        assert member["onnx_data"] == member["onnx"] + ".data" and sha256_file(data) == member["onnx_data_sha256"]
        external = [t for t in _graph(tmp_path / member["onnx"]).graph.initializer
                    if t.data_location == onnx.TensorProto.EXTERNAL]
        assert [t.name for t in external] == ["net.0.weight", "net.3.weight"]  # production's split (>= 1 KiB)
        assert {e.key: e.value for e in external[0].external_data}["location"] == member["onnx_data"]
    pd.testing.assert_frame_equal(predict.predict_ensemble(tmp_path, corpus), predict.predict_ensemble(models, corpus))


def test_predict_mean_std_interval(corpus, exported):
    models, _ = exported
    pred = predict.predict_ensemble(models, corpus)
    members = pred[[f"pred_seed{s}" for s in (0, 1, 2)]].to_numpy()
    np.testing.assert_allclose(pred["pred_mean"], members.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(pred["pred_std"], members.std(axis=1, ddof=1), rtol=1e-12)
    assert (pred["pred_ci95_low"] <= pred["pred_mean"]).all() and (pred["pred_ci95_high"] >= pred["pred_mean"]).all()
    assert len(pred) == len(corpus)


def test_tampered_model_is_refused(exported, corpus, tmp_path):
    models, ensemble = exported
    for p in models.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / ensemble["members"][0]["onnx"]).write_bytes(b"garbage")
    with pytest.raises(BadInput, match="sha256"):
        predict.predict_ensemble(tmp_path, corpus)


def test_hold_needs_force_and_never_takes_the_production_ids(corpus, tmp_path, promote_snapshot):
    hold = {"verdict": "HOLD", "gate": decide({0: 0.90}).gate}
    with pytest.raises(BadInput, match="--force"):
        export.export_ensemble(corpus, CFG, (0,), hold, tmp_path)
    with pytest.raises(BadInput, match="production ensemble's id"):
        export.export_ensemble(corpus, CFG, (0,), hold, tmp_path, force=True, name=NAME)
    ens = export.export_ensemble(corpus, CFG, (0,), hold, tmp_path, force=True)
    assert ens["forced"] is True and ens["id"] == f"{NAME}_unpromoted"
    sidecar = json.loads((tmp_path / f"{NAME}_unpromoted_seed0.json").read_text())
    assert sidecar["gate"]["passed"] is False and sidecar["gate"]["verdict"] == "HOLD"
    rows = json.loads((tmp_path / "registry.rows.json").read_text())["models"]
    assert [r["smoke"] for r in rows] == [True] and rows[0]["id"] == f"{NAME}_unpromoted_seed0"
    with pytest.raises(BadInput, match="registry schema"):
        export.export_ensemble(corpus, CFG, (0,), promote_snapshot((0,)), tmp_path, name="Bad.Name")


def test_vocab_v3_members_are_18_wide_and_not_production(corpus, tmp_path, promote_snapshot):
    config = TrainConfig(epochs=2, hidden=8, codec_vocab="v3")
    ens = export.export_ensemble(corpus, config, (0,), promote_snapshot((0,)), tmp_path)
    assert ens["id"] == f"{NAME}_vocab_v3" and ens["codec"]["num_codecs"] == 18
    sidecar = json.loads((tmp_path / f"{NAME}_vocab_v3_seed0.json").read_text())
    assert sidecar["encoder_vocab_version"] == 3 and len(sidecar["codec_block_layout"]) == 18
    assert len(predict.predict_ensemble(tmp_path, corpus)) == len(corpus)


def test_parity_failure_is_work_failed(corpus, tmp_path, promote_snapshot, monkeypatch):
    real = predict.scores_from_bytes
    monkeypatch.setattr(predict, "scores_from_bytes", lambda *a: real(*a) + 1e-3)  # an onnxruntime that drifts
    with pytest.raises(WorkFailed, match="disagrees"):
        export.export_ensemble(corpus, CFG, (0,), promote_snapshot(), tmp_path)
    assert not list(tmp_path.iterdir())  # nothing published


def test_cli_train_verdict_export_predict_report(corpus, tmp_path):
    """The user's path on a JSONL: train -> verdict (HOLD at 2 epochs) -> export --force -> predict -> report."""
    from kit.corpus.legacy import write_jsonl

    jsonl = tmp_path / "old.jsonl"
    write_jsonl(corpus, jsonl)
    run = tmp_path / "run"
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--corpus", str(jsonl), "--out-dir", str(run), "--epochs", "2", "--hidden", "8",
                             "--seeds", "0,1", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (run / "corpus.parquet").is_file() and (run / "loso" / "seed1" / "predictions.parquet").is_file()
    summary = json.loads((run / "loso" / "summary.json").read_text())
    assert summary["config"]["epochs"] == 2 and summary["config"]["hidden"] == 8 and summary["seeds"] == [0, 1]
    assert summary["codec"]["vocab"] == "v2" and summary["codec"]["cq_min"] == 20.0
    r = runner.invoke(main, ["verdict", "--out-dir", str(run)])
    assert r.exit_code == 1, r.output  # an undertrained model must not promote
    r = runner.invoke(main, ["export", "--out-dir", str(run)])
    assert r.exit_code == 2 and "--force" in r.output
    r = runner.invoke(main, ["export", "--out-dir", str(run), "--force", "--quiet", "--external-data"])
    assert r.exit_code == 0, r.output
    assert (run / "models" / f"{NAME}_unpromoted_seed1.onnx.data").is_file()
    out = tmp_path / "pred.csv"
    r = runner.invoke(main, ["predict", "--models", str(run / "models"), str(jsonl), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert {"pred_mean", "pred_std", "pred_ci95_low", "pred_ci95_high"} <= set(pd.read_csv(out).columns)
    r = runner.invoke(main, ["report", "--out-dir", str(run)])
    assert r.exit_code == 0, r.output
    html = (run / "report" / "index.html").read_text()
    for png in ("fold_plcc.png", "pred_vs_actual.png", "rate_quality.png"):
        assert png in html and (run / "report" / png).stat().st_size > 1000
    r = runner.invoke(main, ["train", "--corpus", str(tmp_path / "missing.parquet"), "--out-dir", str(run)])
    assert r.exit_code == 2 and "not found" in r.output


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["members"][0].pop("sha256"), r"ensemble.json: members/0: 'sha256' is a required property"),
    (lambda m: m["members"][1].update(onnx="../elsewhere.onnx"), r"members/1/onnx: '\.\./elsewhere\.onnx' does not match"),
    (lambda m: m.update(members=[]), r"members: \[\] should be non-empty"),
])
def test_a_broken_manifest_is_one_error_line(exported, corpus, tmp_path, edit, message):
    import re

    models, _ = exported
    for p in models.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    manifest = json.loads((tmp_path / "ensemble.json").read_text())
    edit(manifest)
    (tmp_path / "ensemble.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInput) as info:
        predict.predict_ensemble(tmp_path, corpus)
    assert re.search(message, str(info.value)) and "\n" not in str(info.value), str(info.value)
