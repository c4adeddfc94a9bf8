"""Full-corpus fit per seed, self-contained ONNX export, verified against PyTorch with onnxruntime.

Each member is one ONNX file (opset 17, weights inside the file: no `.onnx.data`), inputs
`features` [N, 6] (raw libvmaf values, in kit.core.schema.FEATURES order; the scaler is in the graph) and
`codec_onehot` [N, K] (one-hot over the sidecar's vocab, then preset_norm, then cq_norm), output
`score` [N], dynamic batch. A sidecar JSON beside it records everything needed to use and trust it,
and models/ensemble.json lists the members with their sha256.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import torch

from kit.core.errors import BadInput, WorkFailed
from kit.core.fsio import json_safe, read_json, sha256_bytes, sha256_file, write_bytes, write_json
from kit.core.ids import shorten
from kit.core.rundir import ENSEMBLE_JSON, RunDir
from kit.core.schema import FEATURES
from kit.corpus.table import corpus_sha256, corpus_summary
from kit.env import fingerprint as env_fingerprint
from kit.results import predict
from kit.results.thresholds import PROMOTE
from kit.train.batched import Job, deterministic_torch, train_models
from kit.train.codec import codec_block, codec_layout
from kit.train.config import TrainConfig
from kit.train.data import (
    Scaler,
    canonical_order,
    check_trainable,
    features,
    load_corpus,
    model_inputs,
    normalise,
    target,
)
from kit.train.loso import FULL_TAG
from kit.train.loso_files import load_loso
from kit.train.model import ScoringModel

OPSET = 17
PARITY_TOL = 1e-4
SCHEMA_VERSION = 1
DEFAULT_NAME = "ensemble"


def _to_onnx(model: ScoringModel, n_codec: int) -> bytes:
    """Export with the TorchScript exporter: deterministic bytes and no onnxscript dependency."""
    buf = io.BytesIO()
    example = (torch.zeros(2, len(FEATURES)), torch.zeros(2, n_codec))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, example, buf, input_names=["features", "codec_onehot"], output_names=["score"],
            opset_version=OPSET, dynamo=False,
            dynamic_axes={"features": {0: "N"}, "codec_onehot": {0: "N"}, "score": {0: "N"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    # Self-contained: every initializer inline (never external data), then the strict checker.
    onnx.external_data_helper.convert_model_from_external_data(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def export_ensemble(
    corpus_df: pd.DataFrame,
    config: TrainConfig,
    seeds: tuple[int, ...] | list[int],
    gate_snapshot: dict[str, Any] | None,
    models_dir: str | Path,
    force: bool = False,
    *,
    name: str = DEFAULT_NAME,
    progress: Callable[[int, int], None] | None = None,
    environment: tuple[dict[str, Any], str] | None = None,
) -> dict[str, Any]:
    """Fit one model per seed on the whole corpus, export and verify each, write ensemble.json.

    Refuses (bad input) unless the gate snapshot says PROMOTE or `force`. ONNX/PyTorch disagreement
    beyond 1e-4 on any corpus row is a work failure (exit 4). `environment` is the (fingerprint, id)
    the sidecars record (default: this environment's, `kit.env.fingerprint.current()`).
    """
    verdict = (gate_snapshot or {}).get("verdict")
    if verdict != PROMOTE and not force:
        raise BadInput(
            f"the verdict is {verdict or 'missing'}: models are exported only on PROMOTE",
            hint="pass --force to export anyway (the sidecars record the verdict)",
        )
    seeds = tuple(sorted({int(s) for s in seeds}))
    full = canonical_order(normalise(corpus_df))
    corpus = corpus_summary(full)
    df = check_trainable(full)
    scaler = Scaler.fit(features(df))
    x, y = model_inputs(df, scaler), target(df).astype(np.float32)
    jobs = [Job(block=0, key=(seed, FULL_TAG)) for seed in seeds]
    net = train_models([(x, y)], jobs, config, names=[f"seed {s} (full corpus)" for s in seeds], progress=progress)
    raw_feats = features(df).astype(np.float32)
    codec = codec_block(df)
    fp, fp_id = environment if environment is not None else env_fingerprint.current()
    models_dir = Path(models_dir)
    members = []
    for m, seed in enumerate(seeds):
        with deterministic_torch(config.threads):
            module = ScoringModel(net.weights(m).to_module(config), scaler.mean, scaler.std).eval()
            with torch.no_grad():
                torch_scores = module(torch.from_numpy(raw_feats), torch.from_numpy(codec)).numpy()
            onnx_bytes = _to_onnx(module, codec.shape[1])
        ort_scores = predict.ort_scores(onnx_bytes, raw_feats, codec)
        worst = float(np.max(np.abs(ort_scores - torch_scores))) if len(df) else 0.0
        if not math.isfinite(worst) or worst > PARITY_TOL:
            raise WorkFailed(
                f"ONNX export of seed {seed} disagrees with PyTorch by {worst:.3g} (> {PARITY_TOL}) on the corpus",
                hint="report this with the environment fingerprint; no models were published",
            )
        stem = f"{name}_seed{seed}"
        onnx_name, sidecar_name = f"{stem}.onnx", f"{stem}.json"
        write_bytes(models_dir / onnx_name, onnx_bytes)
        digest = sha256_bytes(onnx_bytes)
        sidecar = {
            "schema_version": SCHEMA_VERSION,
            "seed": seed,
            "onnx": onnx_name,
            "onnx_sha256": digest,
            "opset": OPSET,
            "inputs": {"features": ["N", len(FEATURES)], "codec_onehot": ["N", codec.shape[1]]},
            "output": {"score": ["N"]},
            "feature_order": list(FEATURES),
            "scaler": {**scaler.to_dict(), "in_graph": True, "note": "features are fed raw; the graph standardises"},
            "codec": codec_layout(),
            "target": "vmaf",
            "parity": {"max_abs_diff": worst, "tolerance": PARITY_TOL, "rows": int(len(df))},
            "config": config.to_dict(),
            "gate": gate_snapshot or {},
            "forced": bool(force and verdict != PROMOTE),
            "corpus_sha256": corpus["sha256"],
            "fingerprint": fp,
            "fingerprint_id": fp_id,
        }
        write_json(models_dir / sidecar_name, json_safe(sidecar))
        members.append({"seed": seed, "onnx": onnx_name, "sidecar": sidecar_name, "sha256": digest,
                        "sidecar_sha256": sha256_file(models_dir / sidecar_name)})
    ensemble = json_safe({
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "members": members,
        "seeds": list(seeds),
        "corpus_sha256": corpus["sha256"],
        "codec": codec_layout(),
        "feature_order": list(FEATURES),
        "config": config.to_dict(),
        "gate": gate_snapshot or {},
        "forced": bool(force and verdict != PROMOTE),
        "fingerprint": fp,
        "fingerprint_id": fp_id,
    })
    write_json(models_dir / ENSEMBLE_JSON, ensemble)
    return ensemble


def export_run(run_dir: str | Path, *, force: bool = False, corpus: str | Path | None = None,
               name: str = DEFAULT_NAME, progress: Callable[[int, int], None] | None = None,
               environment: tuple[dict[str, Any], str] | None = None) -> dict[str, Any]:
    """`ensemble-kit export`: the run's corpus, seeds and config -> run_dir/models/ (PROMOTE or force).

    The corpus must be the one the verdict was computed on (same content sha256), so models never
    ride on a verdict about other data.
    """
    rd = RunDir(Path(run_dir))
    verdict = read_json(rd.verdict, what="verdict.json (run `ensemble-kit verdict` first)")
    loso = load_loso(rd)
    df = load_corpus(corpus or rd.corpus)
    want = (verdict.get("corpus") or {}).get("sha256")
    have = corpus_sha256(df)
    if want and have != want:
        raise BadInput(
            f"the corpus ({corpus or rd.corpus}) is not the one the verdict was computed on "
            f"(sha256 {shorten(have)} vs {shorten(want)})",
            hint="rerun `ensemble-kit train` and `verdict` on this corpus, or pass the original --corpus",
        )
    snapshot = {"verdict": verdict.get("verdict"), "gate": verdict.get("gate"),
                "generated_at_utc": verdict.get("generated_at_utc"), "recommendation": verdict.get("recommendation")}
    return export_ensemble(df, loso.config, loso.seeds, snapshot, rd.models_dir, force, name=name, progress=progress,
                           environment=environment)
