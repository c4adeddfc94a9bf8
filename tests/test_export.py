"""Export: self-contained ONNX (opset 17, dynamic batch), parity with PyTorch, ensemble predict, CLI."""

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
from kit.results import export, predict
from kit.train.codec import VOCAB
from kit.train.config import TrainConfig
from kit.train.synthetic import synthetic_corpus

CFG = TrainConfig(epochs=3, hidden=16)


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return synthetic_corpus(n_sources=3, frames=6, encoders=("libx264", "hevc_videotoolbox"), cqs=(20, 35))


@pytest.fixture(scope="module")
def exported(corpus, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    ensemble = export.export_ensemble(corpus, CFG, (0, 1, 2), {"verdict": "PROMOTE"}, models)
    return models, ensemble


def test_onnx_files_are_self_contained_and_valid(exported):
    models, ensemble = exported
    assert sorted(p.name for p in models.iterdir()) == sorted(
        ["ensemble.json"] + [f"ensemble_seed{s}.{ext}" for s in (0, 1, 2) for ext in ("onnx", "json")])
    for member in ensemble["members"]:
        path = models / member["onnx"]
        assert sha256_file(path) == member["sha256"]
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto, full_check=True)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        assert {o.domain: o.version for o in proto.opset_import}.get("") == 17
        assert [i.name for i in proto.graph.input] == ["features", "codec_onehot"]
        assert [o.name for o in proto.graph.output] == ["score"]
        sidecar = json.loads((models / member["sidecar"]).read_text())
        assert sidecar["onnx_sha256"] == member["sha256"]
        assert sidecar["codec"]["vocab"] == list(VOCAB) and sidecar["codec"]["vocab_version"] >= 1
        assert sidecar["parity"]["max_abs_diff"] <= 1e-4
        assert len(sidecar["scaler"]["mean"]) == 6 and sidecar["config"]["hidden"] == 16
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for n in (1, 7):  # dynamic batch
            out = session.run(["score"], {"features": np.ones((n, 6), np.float32),
                                          "codec_onehot": np.zeros((n, len(VOCAB) + 2), np.float32)})[0]
            assert out.shape == (n,)


def test_export_is_deterministic(corpus, exported, tmp_path):
    models, _ = exported
    export.export_ensemble(corpus, CFG, (0,), {"verdict": "PROMOTE"}, tmp_path)
    assert (tmp_path / "ensemble_seed0.onnx").read_bytes() == (models / "ensemble_seed0.onnx").read_bytes()


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
    copy = tmp_path / "m"
    copy.mkdir()
    for p in models.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    (copy / ensemble["members"][0]["onnx"]).write_bytes(b"garbage")
    with pytest.raises(BadInput, match="sha256"):
        predict.predict_ensemble(copy, corpus)


def test_hold_needs_force(corpus, tmp_path):
    with pytest.raises(BadInput, match="--force"):
        export.export_ensemble(corpus, CFG, (0,), {"verdict": "HOLD"}, tmp_path)
    ens = export.export_ensemble(corpus, CFG, (0,), {"verdict": "HOLD"}, tmp_path, force=True)
    assert ens["forced"] is True


def test_parity_failure_is_work_failed(corpus, tmp_path, monkeypatch):
    real = predict.ort_scores
    monkeypatch.setattr(predict, "ort_scores", lambda *a: real(*a) + 1e-3)  # an onnxruntime that drifts
    with pytest.raises(WorkFailed, match="disagrees"):
        export.export_ensemble(corpus, CFG, (0,), {"verdict": "PROMOTE"}, tmp_path)
    assert not (tmp_path / "ensemble.json").exists()


def test_cli_train_verdict_export_predict_report(corpus, tmp_path):
    """The user's path on an old-kit JSONL: train -> verdict (HOLD at 2 epochs) -> export --force -> predict -> report."""
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
    r = runner.invoke(main, ["verdict", "--out-dir", str(run)])
    assert r.exit_code == 1, r.output  # an undertrained model must not promote
    r = runner.invoke(main, ["export", "--out-dir", str(run)])
    assert r.exit_code == 2 and "--force" in r.output
    r = runner.invoke(main, ["export", "--out-dir", str(run), "--force", "--quiet"])
    assert r.exit_code == 0, r.output
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
