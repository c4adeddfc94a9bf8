"""The fork's contract, checked against its own files (../shared/fork-contract/production: the five production
members, their sidecars, the PROMOTE.json that promoted them, their registry rows and the registry schema):
our members and sidecars have the production key set and types, our rows validate against its schema, our
LOSO/verdict files have its keys, and `predict` runs its members exactly and refuses broken ones."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core.errors import BadInput
from kit.core.fsio import sha256_file
from kit.core.rundir import RunDir
from kit.core.schema import FEATURES
from kit.results import contract, export, gate, predict
from kit.train.config import TrainConfig
from kit.train.loso import run_loso
from kit.train.synthetic import synthetic_corpus

FORK = Path(__file__).resolve().parents[2] / "shared" / "fork-contract"
PRODUCTION = FORK / "production"
TINY = TrainConfig(epochs=2, hidden=8, batch_size=16)
V2 = ["libx264", "libx265", "libsvtav1", "libvvenc", "libvpx-vp9", "h264_nvenc", "hevc_nvenc", "av1_nvenc", "h264_qsv",
      "hevc_qsv", "av1_qsv", "unknown"]
# The fork trainer's loso_seed<N>.json keys (train_fr_regressor_v2_ensemble_loso.py, CONTRACT.md).
LOSO_SEED_KEYS = {"seed", "corpus", "n_folds", "folds", "mean_plcc", "std_plcc", "min_plcc", "max_plcc", "mean_srocc",
                  "mean_rmse", "epochs", "batch_size", "lr", "weight_decay", "num_codecs", "encoder_vocab_version",
                  "wall_time_s"}
FOLD_KEYS = {"held_out", "n_train", "n_val", "plcc", "srocc", "rmse"}
# Scores of the production members (onnxruntime on rows standardised with each sidecar in float64), as
# measured from the fork's files for the contract notes: raw features, encoder, cq -> seed 0..4.
REFERENCE = [
    ([0.99, 0.88, 0.99, 0.996, 0.998, 0.0], "h264_nvenc", 19, [94.782333, 94.489784, 95.046486, 95.277100, 94.026901]),
    ([0.95, 0.50, 0.84, 0.90, 0.93, 8.0], "h264_nvenc", 28, [86.835815, 86.860291, 87.114693, 87.050484, 86.635887]),
    ([0.90, 0.35, 0.75, 0.84, 0.89, 12.0], "libx264", 37, [49.104511, 52.284004, 59.482071, 48.836159, 47.893677]),
    ([0.95, 0.50, 0.84, 0.90, 0.93, 8.0], "hevc_videotoolbox", 28, [62.428051, 65.539993, 71.910675, 63.865124,
                                                                    62.239429]),
]


@pytest.fixture(scope="module")
def production() -> Path:
    if not PRODUCTION.is_dir():
        pytest.skip("../shared/fork-contract is absent (a user's clone): the fork's production files are the reference")
    return PRODUCTION


def _rows(raw: list[list[float]], encoders: list[str], cqs: list[int]) -> pd.DataFrame:
    rows = [{"src": f"s{i % 3}", "encoder": e, "cq": q, "frame_index": i, "vmaf": 50.0, **dict(zip(FEATURES, r, strict=True))}
            for i, (r, e, q) in enumerate(zip(raw, encoders, cqs, strict=True))]
    return pd.DataFrame(rows)


def _types(doc, extras: str | None = None):
    """A JSON document's shape: keys and value types, recursively (lists by their first item)."""
    if isinstance(doc, dict):
        return {k: _types(v) for k, v in doc.items() if k != extras}
    if isinstance(doc, list):
        return [_types(doc[0])] if doc else []
    return "number" if isinstance(doc, float) else type(doc).__name__


# ---- predict runs the production members ---------------------------------------------------------------


def test_predict_reproduces_the_production_members_on_h264_nvenc_rows(production):
    """The done-when: rows labelled h264_nvenc, our predict vs each member's own onnxruntime output on inputs
    standardised (float64, then cast) with its sidecar, from the .onnx path (external data beside it)."""
    rng = np.random.default_rng(4)
    raw = np.column_stack([rng.uniform(0.85, 1.0, 200), rng.uniform(0.3, 0.95, 200), rng.uniform(0.6, 1.0, (200, 3)),
                           rng.uniform(0, 20, 200)])
    cqs = rng.integers(19, 38, 200)
    df = _rows(raw.tolist(), ["h264_nvenc"] * 200, cqs.tolist())
    pred = predict.predict_ensemble(production, df)
    order = pd.Series(range(len(df)))[pd.Index(df["frame_index"]).get_indexer(pred["frame_index"])].to_numpy()
    for seed in range(5):
        side = json.loads((production / f"fr_regressor_v2_ensemble_v1_seed{seed}.json").read_text())
        feats = ((raw - np.array(side["feature_mean"])) / np.array(side["feature_std"])).astype(np.float32)
        codec = np.zeros((200, 14), np.float32)
        codec[:, 5], codec[:, 12] = 1.0, 0.5
        codec[:, 13] = (cqs.astype(np.float32) - 19.0) / 18.0
        session = ort.InferenceSession(str(production / side["onnx"]), providers=["CPUExecutionProvider"])
        own = session.run(["score"], {"features": feats, "codec_onehot": codec})[0]
        assert np.max(np.abs(pred[f"pred_seed{seed}"].to_numpy() - own[order])) <= 1e-6


def test_predict_matches_the_reference_table(production):
    df = _rows([r[0] for r in REFERENCE], [r[1] for r in REFERENCE], [r[2] for r in REFERENCE])
    pred = predict.predict_ensemble(production, df).sort_values("frame_index")
    for seed in range(5):
        np.testing.assert_allclose(pred[f"pred_seed{seed}"], [r[3][seed] for r in REFERENCE], atol=1e-5)


def _copy(production: Path, dest: Path) -> Path:
    shutil.copytree(production, dest)
    for p in dest.iterdir():
        p.chmod(0o644)
    return dest


def _edit_sidecar(folder: Path, seed: int, change) -> None:
    path = folder / f"fr_regressor_v2_ensemble_v1_seed{seed}.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _predict_cli(folder: Path, tmp_path: Path):
    corpus = tmp_path / "rows.jsonl"
    corpus.write_text("".join(json.dumps({"src": f"s{i}", "encoder": "h264_nvenc", "cq": 25, "frame_index": 0,
                                          "vmaf": 80.0, **dict.fromkeys(FEATURES, 0.9)}) + "\n" for i in range(3)))
    return CliRunner().invoke(main, ["predict", "--models", str(folder), str(corpus), "-o", str(tmp_path / "p.csv")])


def _external_location(folder: Path, seed: int, location: str) -> None:
    """Point seed's external data elsewhere (and keep its sidecar's sha256 true, as a careful attacker would)."""
    path = folder / f"fr_regressor_v2_ensemble_v1_seed{seed}.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path.write_bytes(proto.SerializeToString())
    _edit_sidecar(folder, seed, lambda d: d.update(sha256=sha256_file(path)))


@pytest.mark.parametrize(("case", "message"), [
    ("missing key", r"seed1\.json: \(top level\): 'feature_std' is a required property"),
    ("unknown vocab", r"encoder_vocab \(version 2\) is not a vocabulary ensemble-kit knows"),
    ("width mismatch", r"member fr_regressor_v2_ensemble_v1_seed3: its graph takes .*codec_onehot \[N, 14\].*v3.*\[N, 18\]"),
    ("data missing", r"external data fr_regressor_v2_ensemble_v1_seed0\.onnx\.data is missing"),
    ("data outside", r"external data '\.\./secret\.data' is not a file inside .*refused, not followed"),
    ("absolute data", r"external data '/etc/hostname' is not a file inside"),
    ("symlinked data", r"is not a file inside .*refused, not followed"),
])
def test_broken_members_are_one_error_line(production, tmp_path, case, message):
    folder = _copy(production, tmp_path / "m")
    if case == "missing key":
        _edit_sidecar(folder, 1, lambda d: d.pop("feature_std"))
    elif case == "unknown vocab":
        _edit_sidecar(folder, 2, lambda d: d["encoder_vocab"].reverse())
    elif case == "width mismatch":
        v3 = ["libx264", "libaom-av1", "libx265", "h264_nvenc", "hevc_nvenc", "av1_nvenc", "h264_amf", "hevc_amf",
              "av1_amf", "h264_qsv", "hevc_qsv", "av1_qsv", "libvvenc", "libsvtav1", "h264_videotoolbox", "hevc_videotoolbox"]
        _edit_sidecar(folder, 3, lambda d: d.update(encoder_vocab=v3, encoder_vocab_version=3))
    elif case == "data missing":
        (folder / "fr_regressor_v2_ensemble_v1_seed0.onnx.data").unlink()
    elif case == "data outside":
        (tmp_path / "secret.data").write_bytes((folder / "fr_regressor_v2_ensemble_v1_seed0.onnx.data").read_bytes())
        _external_location(folder, 0, "../secret.data")
    elif case == "absolute data":
        _external_location(folder, 0, "/etc/hostname")
    elif case == "symlinked data":
        data = folder / "fr_regressor_v2_ensemble_v1_seed0.onnx.data"
        (tmp_path / "elsewhere.data").write_bytes(data.read_bytes())
        data.unlink()
        data.symlink_to(tmp_path / "elsewhere.data")
    result = _predict_cli(folder, tmp_path)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(message, lines[0]), lines[0]


def test_predict_warns_about_unseen_encoders_and_scores_outside_0_100(production, capsys):
    df = _rows([[0.2, 0.0, 0.1, 0.1, 0.1, 40.0], [0.95, 0.5, 0.84, 0.9, 0.93, 8.0]], ["h264_vaapi", "libx264"], [19, 40])
    predict.predict_ensemble(production, df)
    err = capsys.readouterr().err
    assert "1 row(s) have encoder(s) the members never saw (h264_vaapi)" in err
    assert "outside the members' training range 19..37" in err
    assert "outside [0, 100]" in err


# ---- our members and sidecars are the production ones' shape -------------------------------------------


@pytest.fixture(scope="module")
def our_members(tmp_path_factory, promote_snapshot):
    corpus = synthetic_corpus(n_sources=3, frames=6, encoders=("libx264", "h264_nvenc", "h264_vaapi"), cqs=(19, 37))
    models = tmp_path_factory.mktemp("ours")
    export.export_ensemble(corpus, TrainConfig(epochs=2), (0, 1), promote_snapshot((0, 1)), models, external_data=True)
    return models


def test_our_sidecars_have_the_production_keys_and_types(production, our_members):
    theirs = json.loads((production / "fr_regressor_v2_ensemble_v1_seed0.json").read_text())
    for seed in (0, 1):
        ours = json.loads((our_members / f"fr_regressor_v2_ensemble_v1_seed{seed}.json").read_text())
        assert _types(ours, extras=contract.EXTRAS_KEY) == _types(theirs)
        assert set(ours) - set(theirs) == {contract.EXTRAS_KEY}
        assert ours["sha256"] == sha256_file(our_members / ours["onnx"])
        assert ours["encoder_vocab"] == theirs["encoder_vocab"] == V2
        assert ours["codec_block_layout"] == theirs["codec_block_layout"]
        assert ours["input_names"] == theirs["input_names"] and ours["output_names"] == theirs["output_names"]


def test_the_c_loaders_keys_appear_only_where_the_fork_puts_them(our_members):
    """libvmaf reads kind/name/input_name/... by their first occurrence anywhere in the sidecar text."""
    for path in our_members.glob("*_seed*.json"):
        text = path.read_text()
        for key in contract.C_LOADER_KEYS:
            assert text.count(f'"{key}"') == (1 if key == "kind" else 0), (path.name, key)
        assert json.loads(text[text.index('"kind"') - 1:].split(",")[0].join("{}")) == {"kind": "fr"}


def test_our_registry_rows_validate_against_the_forks_schema(production, our_members):
    schema = json.loads((production / "registry.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for doc in (json.loads((our_members / "registry.rows.json").read_text()),
                json.loads((production / "registry.rows.json").read_text())):
        jsonschema.Draft202012Validator(schema).validate(doc)
    ours = json.loads((our_members / "registry.rows.json").read_text())["models"]
    theirs = json.loads((production / "registry.rows.json").read_text())["models"][0]
    assert [set(r) for r in ours] == [set(theirs)] * 2
    for row in ours:  # the fork's registry test: row sha256 == sidecar sha256 == the .onnx's, smoke false
        side = json.loads((our_members / f"{row['id']}.json").read_text())
        assert row["sha256"] == side["sha256"] == sha256_file(our_members / row["onnx"]) and row["smoke"] is False
        assert side["gate"]["passed"] is True and side["gate"]["verdict"] == "PROMOTE"


def test_our_graphs_use_the_production_ops_and_layout(production, our_members):
    theirs = onnx.load(str(production / "fr_regressor_v2_ensemble_v1_seed0.onnx"), load_external_data=False)
    ours = onnx.load(str(our_members / "fr_regressor_v2_ensemble_v1_seed0.onnx"), load_external_data=False)
    # Constant (how the TorchScript exporter holds scalars) is on the fork's C allowlist (op_allowlist.c) too
    assert {n.op_type for n in ours.graph.node} <= {n.op_type for n in theirs.graph.node} | {"Constant"}

    def shape(m):
        return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in [*m.graph.input, *m.graph.output]]

    def external(m):
        return sorted((t.name, {e.key: e.value for e in t.external_data}["length"]) for t in m.graph.initializer
                      if t.data_location == onnx.TensorProto.EXTERNAL)

    assert shape(ours) == shape(theirs) and external(ours) == external(theirs)
    assert [(o.domain, o.version) for o in ours.opset_import] == [(o.domain, o.version) for o in theirs.opset_import]


# ---- LOSO and verdict files in the fork's shape -------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    corpus = synthetic_corpus(n_sources=3, frames=8, encoders=("libx264", "h264_nvenc"), cqs=(19, 31))
    result = run_loso(corpus, TINY, (0, 1), root)
    return root, result


def test_loso_seed_files_have_the_forks_keys_and_the_gates_numbers(small_run):
    root, result = small_run
    doc = gate.write_verdict(root, now=datetime(2026, 5, 6, 11, 10, 9, tzinfo=UTC))
    for seed in (0, 1):
        seed_doc = json.loads(RunDir(root).loso_seed_json(seed).read_text())
        assert set(seed_doc) - {"ensemble_kit"} == LOSO_SEED_KEYS
        assert all(set(f) == FOLD_KEYS for f in seed_doc["folds"]) and seed_doc["n_folds"] == 3
        assert seed_doc["mean_plcc"] == doc["gate"]["per_seed_plccs"][str(seed)]  # the same number the gate used
        assert seed_doc["num_codecs"] == 14 and seed_doc["encoder_vocab_version"] == 2
        assert {f["held_out"] for f in seed_doc["folds"]} == set(result.folds["fold_src"])
        assert all(f["n_train"] + f["n_val"] == 3 * 2 * 2 * 8 for f in seed_doc["folds"])


def test_the_fork_verdict_file_has_promote_jsons_keys(production, small_run):
    root, _ = small_run
    gate.write_verdict(root, mean_plcc=-1.0, per_seed_min=-1.0, plcc_spread_max=2.0,
                       now=datetime(2026, 5, 6, 11, 10, 9, tzinfo=UTC))
    theirs = json.loads((production / "PROMOTE.json").read_text())
    ours = json.loads((root / "loso" / "PROMOTE.json").read_text())
    assert not (root / "loso" / "HOLD.json").exists()
    per_seed = ours["gate"].pop("per_seed_plccs"), theirs["gate"].pop("per_seed_plccs")
    assert list(per_seed[0]) == ["0", "1"] and {type(v) for p in per_seed for v in p.values()} == {float}
    assert _types(ours, extras="ensemble_kit") == _types(theirs)
    assert ours["generated_at_utc"] == "2026-05-06T11:10:09+00:00"
    assert ours["recommendation"] == theirs["recommendation"]
    held = gate.write_verdict(root, mean_plcc=1.0)
    hold = json.loads((root / "loso" / "HOLD.json").read_text())
    assert held["verdict"] == hold["verdict"] == "HOLD" and not (root / "loso" / "PROMOTE.json").exists()
    assert hold["recommendation"].startswith("keep smoke=true; investigate diversity / hyperparameters. Failing aspects: mean_plcc ")


def test_a_kill_between_the_two_writes_never_leaves_a_stale_promote(small_run, monkeypatch):
    root, _ = small_run
    gate.write_verdict(root, mean_plcc=-1.0, per_seed_min=-1.0, plcc_spread_max=2.0)
    assert (root / "loso" / "PROMOTE.json").is_file()
    real = gate.write_json

    def killed(path, obj):
        if Path(path).name == "verdict.json":
            raise KeyboardInterrupt  # SIGKILL stand-in: the fork file is written, verdict.json not yet
        real(path, obj)

    monkeypatch.setattr(gate, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        gate.write_verdict(root, mean_plcc=1.0)
    assert sorted(p.name for p in (root / "loso").glob("*.json") if p.stem in ("PROMOTE", "HOLD")) == ["HOLD.json"]
    assert not (root / "verdict.json").exists()  # no old PROMOTE verdict.json beside the new HOLD either
    monkeypatch.setattr(gate, "write_json", real)
    assert gate.write_verdict(root, mean_plcc=1.0)["verdict"] == "HOLD"  # rerun: both views again
    assert (root / "verdict.json").is_file() and not (root / "loso" / "PROMOTE.json").exists()


def test_v3_training_refuses_encoders_outside_v3(small_run):
    corpus = synthetic_corpus(n_sources=3, frames=4, encoders=("libx264", "h264_vaapi"), cqs=(19, 31))
    with pytest.raises(BadInput, match="h264_vaapi.*--codec-vocab v2"):
        run_loso(corpus, TrainConfig(epochs=1, hidden=8, codec_vocab="v3"), (0,))


def test_predict_picks_the_ensemble_out_of_a_model_tiny_folder(production, tmp_path):
    """The fork's model/tiny/ holds other models' .onnx + .json too: only <name>_seed<N> members are run."""
    folder = _copy(production, tmp_path / "tiny")
    (folder / "vmaf_tiny_v2.json").write_text('{"kind": "fr", "name": "vmaf_tiny_v2"}')
    (folder / "vmaf_tiny_v2.onnx").write_bytes(b"not ours to run")
    df = _rows([REFERENCE[0][0]], [REFERENCE[0][1]], [REFERENCE[0][2]])
    assert [c for c in predict.predict_ensemble(folder, df).columns if c.startswith("pred_seed")] == [
        f"pred_seed{s}" for s in range(5)]
    shutil.copy(folder / "fr_regressor_v2_ensemble_v1_seed0.json", folder / "other_seed0.json")
    shutil.copy(folder / "fr_regressor_v2_ensemble_v1_seed0.onnx", folder / "other_seed0.onnx")
    with pytest.raises(BadInput, match="members of 2 ensembles"):
        predict.predict_ensemble(folder, df)
