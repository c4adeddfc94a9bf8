"""Trainer: batched == plain per-model training, model independence, determinism, metrics, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from kit.core.errors import BadInput, WorkFailed
from kit.corpus.encoders import ENCODERS
from kit.corpus.table import corpus_sha256
from kit.train.batched import Job, train_models
from kit.train.codec import UNKNOWN, VOCAB, codec_block
from kit.train.config import TrainConfig, parse_seeds
from kit.train.data import check_trainable, load_corpus
from kit.train.loso import run_loso
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


def test_loso_outputs_and_verdict_are_byte_identical(small_corpus, tmp_path):
    """Two full runs (training, LOSO files, verdict) on the same corpus give the same bytes."""
    from datetime import UTC, datetime

    from kit.results.gate import decide, write_verdict_file

    for run in ("a", "b"):
        result = run_loso(small_corpus, TINY, (0, 1), tmp_path / run)
        write_verdict_file(tmp_path / run / "verdict.json", decide(result), result, now=datetime(2026, 1, 1, tzinfo=UTC))
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 5  # folds.csv, summary.json, 2 x predictions, verdict
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


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


def test_codec_vocabulary_covers_every_encoder():
    assert set(ENCODERS) | {UNKNOWN} == set(VOCAB)
    df = pd.DataFrame({"encoder": ["hevc_videotoolbox", "h264_vaapi", "mystery_enc"], "cq": [25, 25, 25],
                       "preset": ["", "", ""]})
    block = codec_block(df)
    assert block.shape == (3, len(VOCAB) + 2)
    assert block[0, VOCAB.index("hevc_videotoolbox")] == 1
    assert block[1, VOCAB.index("h264_vaapi")] == 1
    assert block[2, VOCAB.index(UNKNOWN)] == 1
    assert (block[:, : len(VOCAB)].sum(axis=1) == 1).all()
    legacy = pd.DataFrame({"encoder": ["libx264", "libx264"], "cq": [51, 0], "preset": ["", "medium"]})
    block = codec_block(legacy)
    assert block[0, -2] == 0.5 and block[1, -2] == pytest.approx(ENCODERS["libx264"].preset_norm)  # unknown preset: neutral
    assert block[0, -1] == 1.0 and block[1, -1] == 0.0


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
