"""Trainer: batched == plain per-model training, model independence, determinism, metrics, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kit.core.errors import BadInput, WorkFailed
from kit.corpus.table import corpus_sha256
from kit.train.batched import Job, train_models
from kit.train.codec import UNKNOWN, VOCABS, CodecSpec
from kit.train.config import TrainConfig, parse_seeds
from kit.train.data import Scaler, check_trainable, corpus_codec, load_corpus
from kit.train.loso import FULL_TAG, prepare_folds, run_loso
from kit.train.metrics import agreement, fold_metrics, nan_safe_summary, per_encode
from kit.train.plain import train_one
from kit.train.synthetic import synthetic_corpus

TINY = TrainConfig(epochs=3, hidden=16, batch_size=16)


def _blocks(sizes=(70, 100, 45), n_in=22, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        out.append((x, (3 * x[:, 0] + x[:, 1] + 50).astype(np.float32)))
    return out


def _all(w):
    return w.flat()


@pytest.mark.parametrize(("fused", "private_gelu"), [(True, True), (False, True), (True, False), (False, False)],
                         ids=["fused-adam+aten-gelu", "vectorised-adam+aten-gelu", "fused-adam+erf-gelu",
                              "public-fallbacks-only"])
def test_batched_equals_plain_per_model_loop(fused, private_gelu, monkeypatch):
    """Different fold sizes (partial last batches, masked steps) still give each model its solo training,
    with torch's private kernels and with their public fallbacks (kit.train.kernels)."""
    from kit.train import kernels

    monkeypatch.setattr(kernels, "FUSED_ADAM", fused and kernels.FUSED_ADAM)
    monkeypatch.setattr(kernels, "PRIVATE_GELU_BACKWARD", private_gelu and kernels.PRIVATE_GELU_BACKWARD)
    blocks = _blocks()
    jobs = [Job(b, (s, b)) for s in (0, 1) for b in range(3)]
    net = train_models(blocks, jobs, TINY)
    for m, job in enumerate(jobs):
        solo = train_one(*blocks[job.block], TINY, job.key)
        assert np.max(np.abs(_all(solo) - _all(net.weights(m)))) < 1e-5


def test_model_does_not_depend_on_its_neighbours():
    blocks = _blocks()
    alone = train_models(blocks, [Job(1, (3, 7))], TINY).weights(0)
    crowd = train_models(blocks, [Job(0, (0, 1)), Job(1, (3, 7)), Job(2, (9, 9))], TINY).weights(1)
    np.testing.assert_allclose(_all(alone), _all(crowd), rtol=0, atol=1e-6)


def test_worker_groups_do_not_change_results():
    blocks = _blocks()
    jobs = [Job(b, (s, b)) for s in range(3) for b in range(3)]
    one = train_models(blocks, jobs, TrainConfig(epochs=2, hidden=16, batch_size=16, workers=1))
    three = train_models(blocks, jobs, TrainConfig(epochs=2, hidden=16, batch_size=16, workers=3))
    assert three.M == one.M == 9
    assert np.array_equal(one.P.numpy(), three.P.numpy())


def test_divergence_is_a_training_failure():
    blocks = [(x, np.full(len(x), 3e38, dtype=np.float32)) for x, _ in _blocks()]
    with pytest.raises(WorkFailed, match="diverged.*seed 0 fold a"):
        train_models(blocks, [Job(0, (0,))], TINY, names=["seed 0 fold a"])
    jobs = [Job(b, (s, b)) for s in range(2) for b in range(3)]  # every group fails; the first one is named
    with pytest.raises(WorkFailed, match="diverged.*model 0"):
        train_models(blocks, jobs, TrainConfig(epochs=2, hidden=16, workers=2))


@pytest.fixture(scope="module")
def small_corpus() -> pd.DataFrame:
    return synthetic_corpus(n_sources=4, frames=8, encoders=("libx264", "libx265"), cqs=(19, 31, 43))


def _without_wall_time(path: Path) -> bytes:
    """A file's bytes, with the one measured number (loso_seed<N>.json's wall_time_s) blanked."""
    if not path.name.startswith("loso_seed"):
        return path.read_bytes()
    doc = json.loads(path.read_text())
    assert isinstance(doc.pop("wall_time_s"), float)
    return json.dumps(doc, sort_keys=True).encode()


def test_loso_outputs_and_verdict_are_byte_identical(small_corpus, tmp_path):
    """Two full runs (training, LOSO files, verdict, the fork's files) on the same corpus give the same
    bytes, apart from the measured wall_time_s of the fork's loso_seed<N>.json."""
    from datetime import UTC, datetime

    from kit.results.gate import decide, write_decision

    for run in ("a", "b"):
        result = run_loso(small_corpus, TINY, (0, 1), tmp_path / run)
        write_decision(tmp_path / run, decide(result), result, now=datetime(2026, 1, 1, tzinfo=UTC))
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    # folds.csv, summary.json, 2 x predictions, 2 x loso_seed<N>.json, verdict.json, PROMOTE.json or HOLD.json
    assert files_a == files_b and len(files_a) == 8
    for rel in files_a:
        assert _without_wall_time(tmp_path / "a" / rel) == _without_wall_time(tmp_path / "b" / rel), rel


def test_loso_folds_and_seeds(small_corpus):
    result = run_loso(small_corpus, TINY, (2, 0))
    assert result.seeds == (0, 2)
    assert len(result.folds) == 2 * 4
    assert set(result.folds["fold_src_sha256"]) == set(small_corpus["src_sha256"])
    # every frame of every source is predicted exactly once per seed, by the model that never saw it
    assert len(result.predictions) == 2 * len(small_corpus)
    sha_of = dict(zip(small_corpus["src"], small_corpus["src_sha256"], strict=False))
    held = result.predictions
    assert (held["fold_src_sha256"] == held["src"].map(sha_of)).all()
    # seed s fold k is the same model whatever else runs beside it
    alone = run_loso(small_corpus, TINY, (2,))
    a = alone.predictions["pred"].to_numpy()
    b = result.predictions[result.predictions["seed"] == 2]["pred"].to_numpy()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_metrics_equal_scipy_with_ties():
    rng = np.random.default_rng(1)
    actual = np.round(rng.uniform(20, 100, 200))  # many ties
    pred = np.round(actual + rng.normal(0, 8, 200) / 4) * 1.0
    m = agreement(pred, actual)
    assert m["srocc"] == pytest.approx(stats.spearmanr(pred, actual)[0], abs=1e-12)
    assert m["krocc"] == pytest.approx(stats.kendalltau(pred, actual)[0], abs=1e-12)
    assert m["plcc"] == pytest.approx(np.corrcoef(pred, actual)[0, 1], abs=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean((pred - actual) ** 2)))
    assert math.isnan(agreement(np.ones(5), np.arange(5.0))["plcc"])


def test_per_encode_means_over_each_cells_frames():
    frames = pd.DataFrame({"src_sha256": ["a"] * 4 + ["b"] * 2, "encoder": ["x"] * 6, "cq": [1, 1, 2, 2, 1, 1],
                           "pred": [1.0, 3.0, 5.0, 7.0, 0.0, 4.0], "vmaf": [2.0, 2.0, 6.0, 8.0, 1.0, 1.0]})
    enc = per_encode(frames)
    assert enc["pred"].tolist() == [2.0, 6.0, 2.0] and enc["vmaf"].tolist() == [2.0, 7.0, 1.0]
    m = fold_metrics(frames)
    assert m["n_encodes"] == 3 and m["n_frames"] == 6


def test_nan_safe_summary_is_order_independent():
    values = [0.97, float("nan"), 0.951, 0.99, 0.9612345]
    s = nan_safe_summary(values)
    assert s == nan_safe_summary(list(reversed(values)))
    assert s["n"] == 4 and s["n_nan"] == 1 and s["min"] == 0.951 and s["max"] == 0.99
    assert math.isnan(nan_safe_summary([float("nan")])["mean"])


def test_codec_block_is_the_forks():
    """v2: 12 slots (others -> unknown), preset_norm 0.5, crf_norm over the corpus cq range in float32."""
    v2 = VOCABS["v2"]
    assert v2.width == 14 and v2.encoders[5] == "h264_nvenc" and v2.encoders[-1] == UNKNOWN
    spec = CodecSpec.of_corpus(np.array([19, 37, 25]), "v2")
    assert (spec.cq_min, spec.cq_max) == (19.0, 37.0)
    block = spec.block(["h264_nvenc", "hevc_videotoolbox", "libx264"], np.array([19, 28, 37]))
    expected = np.zeros((3, 14), np.float32)
    expected[0, 5] = expected[1, 11] = expected[2, 0] = 1.0
    expected[:, 12] = 0.5
    expected[:, 13] = np.float32([0.0, np.float32(9) / np.float32(18), 1.0])
    assert block.dtype == np.float32 and np.array_equal(block, expected)
    assert spec.to_dict()["codec_block_layout"][5] == "encoder_onehot[h264_nvenc]"
    one_cq = CodecSpec.of_corpus(np.array([25, 25]), "v2")  # a single cq: the column carries no signal
    assert (one_cq.block(["libx264"], np.array([25]))[:, 13] == 0.5).all()


def test_codec_vocab_v3_has_no_unknown_slot():
    v3 = CodecSpec.of_corpus(np.array([20, 30]), "v3")
    assert v3.vocab.width == 18 and v3.block(["hevc_videotoolbox"], np.array([20]))[0, 15] == 1.0
    with pytest.raises(BadInput, match=r"h264_vaapi.*no slot in codec vocabulary v3.*--codec-vocab v2"):
        v3.block(["libx264", "h264_vaapi"], np.array([20, 30]))
    with pytest.raises(BadInput, match="--codec-vocab"):
        TrainConfig(codec_vocab="v1")


def test_scaler_is_the_forks():
    x = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 2.0 + 1e-10], [5.0, 5.0, 2.0]])
    scaler = Scaler.fit(x)
    assert scaler.std[0] == pytest.approx(np.std([1.0, 3.0, 5.0]))  # population std
    assert scaler.std[1] == 1.0 and scaler.std[2] == 1.0  # std < 1e-8 -> 1


def test_batched_equals_plain_loop_on_the_forks_inputs(small_corpus):
    """The parity proof again, on what training really feeds: fold-local scaler + the fork's 14-wide codec block."""
    df = check_trainable(small_corpus)
    codec = corpus_codec(df, "v2")
    _, blocks, _ = prepare_folds(df, codec)
    assert blocks[0][0].shape[1] == 6 + 14
    blocks = blocks[:2]
    jobs = [Job(b, (s, FULL_TAG, b)) for s in (0, 3) for b in range(2)]
    net = train_models(blocks, jobs, TINY)
    for m, job in enumerate(jobs):
        solo = train_one(*blocks[job.block], TINY, job.key)
        assert np.max(np.abs(_all(solo) - _all(net.weights(m)))) < 1e-5


def test_bad_corpora_are_bad_input(small_corpus, tmp_path):
    two = small_corpus[small_corpus["src"].isin(sorted(small_corpus["src"].unique())[:2])]
    with pytest.raises(BadInput, match="at least 3"):
        check_trainable(two)
    broken = small_corpus.copy()
    first = sorted(broken["src"].unique())[0]
    broken.loc[broken["src"] == first, "vmaf"] = np.nan
    with pytest.raises(BadInput, match=first):
        check_trainable(broken)
    with pytest.raises(BadInput, match="not found"):
        load_corpus(tmp_path / "nope.parquet")


def test_corpus_hash_ignores_row_order(small_corpus):
    shuffled = small_corpus.sample(frac=1.0, random_state=3)
    assert corpus_sha256(shuffled) == corpus_sha256(small_corpus)
    changed = small_corpus.copy()
    changed.loc[0, "vmaf"] += 1e-9
    assert corpus_sha256(changed) != corpus_sha256(small_corpus)


def test_parse_seeds():
    assert parse_seeds("4,0-2") == (0, 1, 2, 4)
    with pytest.raises(BadInput):
        parse_seeds("a,b")


def test_config_rejects_nonsense():
    with pytest.raises(BadInput, match="--lr"):
        TrainConfig(lr=-1.0)


def test_legacy_jsonl_loads(small_corpus, tmp_path: Path):
    from kit.corpus.legacy import write_jsonl

    path = tmp_path / "old.jsonl"
    write_jsonl(small_corpus, path)
    with open(path, "a") as fh:  # the old kit appended duplicates on re-runs
        fh.write(path.read_text().splitlines()[0] + "\n")
    df = load_corpus(path)
    assert len(df) == len(small_corpus)
    assert df["src_sha256"].nunique() == small_corpus["src"].nunique()


def test_corpus_hash_ignores_timings_and_provenance_but_not_content():
    """Two boxes that computed the same rows must agree on the corpus hash; any value change must not."""
    from kit.core.schema import CORPUS_COLUMNS

    rows = {c: ([1, 2] if t == "int64" else [0.5, 0.25] if t == "float64" else ["a", "b"]) for c, t in CORPUS_COLUMNS.items()}
    df = pd.DataFrame(rows)
    other_box = df.assign(enc_time_ms=[9.0, 9.0], score_time_ms=[7.0, 7.0], box_id=["zz", "zz"], platform=["darwin-arm64"] * 2)
    assert corpus_sha256(df) == corpus_sha256(other_box)
    assert corpus_sha256(df) != corpus_sha256(df.assign(vmaf=[0.5, 0.26]))
    assert corpus_sha256(df) != corpus_sha256(df.assign(enc_bytes=[1, 3]))
