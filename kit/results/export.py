"""Full-corpus fit per seed, exported as members the VMAF fork takes unchanged, verified with onnxruntime.

Each member is `<name>_seed<N>.onnx` (opset 17, inputs `features` [batch, 6] standardised by the caller
and `codec_onehot` [batch, K], output `score` [batch]; no scaler inside: the fork's contract, see
kit.results.contract), self-contained by default or, with `external_data`, the production two-file
layout `.onnx` + `.onnx.data`. Beside it: its sidecar `<name>_seed<N>.json` with every production key
(scaler `feature_mean`/`feature_std` fit on the full corpus, the codec vocabulary and cq range, the
gate, the recipe), then `registry.rows.json` (rows for the fork's registry) and `ensemble.json` (our
manifest: every file's sha256, written last).

Verified twice before anything counts as exported: PyTorch vs onnxruntime on every corpus row through
the consumer's path (standardise with the sidecar's numbers in float64, cast, feed), then the written
files are loaded back exactly as `predict` loads them and must give the same scores.
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

from kit import __version__
from kit.core.console import warn
from kit.core.errors import BadInput, WorkFailed
from kit.core.fsio import json_safe, read_json, sha256_bytes, sha256_file, write_bytes, write_json
from kit.core.ids import shorten
from kit.core.rundir import ENSEMBLE_JSON, RunDir
from kit.core.schema import FEATURES
from kit.corpus.table import corpus_sha256, corpus_summary, jsonl_sha256
from kit.env import fingerprint as env_fingerprint
from kit.results import contract, predict, provenance
from kit.results.thresholds import PROMOTE
from kit.train.batched import Job, check_memory, deterministic_torch, train_models
from kit.train.config import TrainConfig
from kit.train.data import (
    Scaler,
    canonical_order,
    check_trainable,
    corpus_codec,
    features,
    load_corpus,
    model_inputs,
    normalise,
    target,
)
from kit.train.loso import FULL_TAG
from kit.train.loso_files import load_loso
from kit.train.model import HIDDEN_LAYERS, ForkMember

PARITY_TOL = 1e-4
SCHEMA_VERSION = 2
EXTERNAL_DATA_MIN_BYTES = 1024  # initializers this big go to .onnx.data (onnx's default; production's split)
CORPUS_FILE = "corpus.jsonl"  # what sidecar corpus.sha256 is the sha256 of: `ensemble-kit corpus export --format jsonl`


def _to_onnx(member: ForkMember, n_codec: int) -> onnx.ModelProto:
    """Export with the TorchScript exporter (deterministic bytes, no onnxscript), then the strict checker."""
    buf = io.BytesIO()
    example = (torch.zeros(2, len(FEATURES)), torch.zeros(2, n_codec))
    dim = {0: contract.BATCH_DIM}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            member, example, buf, input_names=list(contract.INPUT_NAMES), output_names=list(contract.OUTPUT_NAMES),
            opset_version=contract.OPSET, dynamo=False,
            dynamic_axes={name: dim for name in (*contract.INPUT_NAMES, *contract.OUTPUT_NAMES)},
        )
    proto = onnx.load_from_string(buf.getvalue())
    onnx.external_data_helper.convert_model_from_external_data(proto)  # every initializer inline
    onnx.checker.check_model(proto, full_check=True)
    return proto


def split_external(proto: onnx.ModelProto, data_name: str) -> tuple[bytes, bytes]:
    """(.onnx bytes, .onnx.data bytes) in the production layout: initializers of at least 1 KiB moved, in
    graph order and without padding, to `data_name` (a bare file name beside the .onnx)."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    data = bytearray()
    for tensor in proto.graph.initializer:
        if len(tensor.raw_data) < EXTERNAL_DATA_MIN_BYTES:
            continue
        raw = tensor.raw_data
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", data_name), ("offset", str(len(data))), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        data += raw
    return proto.SerializeToString(), bytes(data)


def export_ensemble(
    corpus_df: pd.DataFrame,
    config: TrainConfig,
    seeds: tuple[int, ...] | list[int],
    gate_snapshot: dict[str, Any] | None,
    models_dir: str | Path,
    force: bool = False,
    *,
    name: str | None = None,
    external_data: bool = False,
    progress: Callable[[int, int], None] | None = None,
    environment: tuple[dict[str, Any], str] | None = None,
    max_memory: int | None = None,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit one model per seed on the whole corpus, export and verify each, write sidecars, registry rows
    and ensemble.json (last), which records `inputs` (the verdict it was exported under, kit.results.provenance).

    Refuses (bad input) unless the gate snapshot says PROMOTE or `force`; a forced or v3 export never
    takes the production ids (`contract.ensemble_name`). ONNX/PyTorch disagreement beyond 1e-4 on any
    corpus row is a work failure (exit 4) and publishes nothing. `environment` is the (fingerprint, id)
    the files record (default: this environment's).
    """
    snapshot = gate_snapshot or {}
    verdict = snapshot.get("verdict")
    promoted = verdict == PROMOTE
    if not promoted and not force:
        raise BadInput(
            f"the verdict is {verdict or 'missing'}: models are exported only on PROMOTE",
            hint="pass --force to export anyway (the members then get non-production ids and smoke=true rows)",
        )
    name = contract.ensemble_name(name, promoted=promoted, vocab=config.codec_vocab)
    seeds = tuple(sorted({int(s) for s in seeds}))
    full = canonical_order(normalise(corpus_df))
    summary = corpus_summary(full)
    df = check_trainable(full)
    codec = corpus_codec(df, config.codec_vocab)
    check_memory([len(df)], [0] * len(seeds), len(FEATURES) + codec.vocab.width, config, max_memory)
    scaler = Scaler.fit(features(df))
    x, y = model_inputs(df, scaler, codec), target(df).astype(np.float32)
    jobs = [Job(block=0, key=(seed, FULL_TAG)) for seed in seeds]
    net = train_models([(x, y)], jobs, config, names=[f"seed {s} (full corpus)" for s in seeds], progress=progress)
    fp, fp_id = environment if environment is not None else env_fingerprint.current()
    corpus_block = {"cq_max": codec.cq_max, "cq_min": codec.cq_min, "n_rows": int(len(df)), "path": CORPUS_FILE,
                    "sha256": jsonl_sha256(df)}
    recipe = contract.training_recipe(config.to_dict(), depth=HIDDEN_LAYERS, codec=codec)
    n_folds = int(df["src_sha256"].nunique())
    models_dir = Path(models_dir)

    staged: list[tuple[dict[str, bytes], dict[str, Any], dict[str, Any], np.ndarray]] = []
    for m, seed in enumerate(seeds):
        module = ForkMember(net.weights(m).to_module(config))
        with deterministic_torch(config.threads), torch.no_grad():
            torch_scores = module(torch.from_numpy(x[:, : len(FEATURES)]), torch.from_numpy(x[:, len(FEATURES):])).numpy()
            proto = _to_onnx(module, codec.vocab.width)
        stem = contract.member_id(name, seed)
        files = _member_files(proto, stem, external_data)
        onnx_name = f"{stem}.onnx"
        extras = {"kit_version": __version__, "schema_version": SCHEMA_VERSION, "codec_vocab": codec.vocab.name,
                  "config": config.to_dict(), "corpus_content_sha256": summary["sha256"],
                  "forced": not promoted, "fingerprint_id": fp_id, "layout": _layout(external_data)}
        side = contract.sidecar(
            name=name, seed=seed, onnx_name=onnx_name, sha256=sha256_bytes(files[onnx_name]), mean=scaler.mean.tolist(),
            std=scaler.std.tolist(), codec=codec, recipe=recipe, corpus=corpus_block,
            gate=contract.sidecar_gate(snapshot, seed), n_folds=n_folds, extras=extras)
        # parity through the consumer's path: raw features standardised with the sidecar's own numbers
        ort_scores = predict.scores_from_bytes(proto.SerializeToString(), *predict.member_inputs(df, side))
        worst = float(np.max(np.abs(ort_scores - torch_scores))) if len(df) else 0.0
        if not math.isfinite(worst) or worst > PARITY_TOL:
            raise WorkFailed(
                f"ONNX export of seed {seed} disagrees with PyTorch by {worst:.3g} (> {PARITY_TOL}) on the corpus",
                hint="report this with the environment fingerprint; no models were published",
            )
        side[contract.EXTRAS_KEY]["parity"] = {"max_abs_diff": worst, "tolerance": PARITY_TOL, "rows": int(len(df))}
        staged.append((files, side, contract.registry_row(member=stem, onnx_name=onnx_name, sha256=side["sha256"],
                                                          seed=seed, name=name, promoted=promoted), ort_scores))

    members, rows = [], []
    for files, side, row, _ in staged:
        for file_name, data in files.items():  # .onnx.data before the .onnx that points to it
            write_bytes(models_dir / file_name, data)
        sidecar_name = f"{side['id']}.json"
        write_json(models_dir / sidecar_name, json_safe(side))
        member = {"id": side["id"], "seed": side["seed"], "onnx": side["onnx"], "sha256": side["sha256"],
                  "sidecar": sidecar_name, "sidecar_sha256": sha256_file(models_dir / sidecar_name)}
        data_name = f"{side['onnx']}.data"
        if data_name in files:
            member.update(onnx_data=data_name, onnx_data_sha256=sha256_bytes(files[data_name]))
        members.append(member)
        rows.append(row)
    write_json(models_dir / contract.REGISTRY_FILE, contract.registry_document(rows))
    ensemble = json_safe({
        "schema_version": SCHEMA_VERSION,
        "id": name,
        "kind": "fr_ensemble",
        "ensemble_size": len(members),
        "members": members,
        "seeds": list(seeds),
        "feature_order": list(FEATURES),
        "feature_mean": scaler.mean.tolist(),
        "feature_std": scaler.std.tolist(),
        "codec": codec.to_dict(),
        "codec_vocab": list(codec.vocab.encoders),
        "codec_vocab_version": codec.vocab.version,
        "layout": _layout(external_data),
        "corpus": corpus_block,
        "corpus_sha256": summary["sha256"],
        "registry": contract.REGISTRY_FILE,
        "registry_sha256": sha256_file(models_dir / contract.REGISTRY_FILE),
        "config": config.to_dict(),
        "gate": snapshot,
        "promoted": promoted,
        "forced": not promoted,
        "smoke": not promoted,
        "kit_version": __version__,
        "fingerprint": fp,
        "fingerprint_id": fp_id,
        **({provenance.INPUTS_KEY: inputs} if inputs is not None else {}),
    })
    write_json(models_dir / ENSEMBLE_JSON, ensemble)
    _check_written(models_dir, df, [s[3] for s in staged])
    _warn_left_over(models_dir, ensemble)
    return ensemble


def _warn_left_over(models_dir: Path, ensemble: dict[str, Any]) -> None:
    """Members of an earlier export (another --name, more seeds) stay in models/ and are never deleted, but
    they are not in ensemble.json or registry.rows.json: whoever copies models/*.onnx into the fork's
    model/tiny/ must hear that some of them are not this export's."""
    ours = {p.name for p in RunDir(models_dir.parent).model_files(ensemble)}  # ensemble.json, registry, members
    left = sorted(p.name for p in models_dir.iterdir() if p.is_file() and p.name not in ours
                  and p.name.endswith((".onnx", ".onnx.data", ".json")))
    if left:
        shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
        warn(f"{models_dir} also holds {len(left)} file(s) an earlier export wrote ({shown}): they are not in "
             f"{ENSEMBLE_JSON} or {contract.REGISTRY_FILE}; remove them before copying {models_dir.name}/ into the "
             "fork's model/tiny/")


def _layout(external_data: bool) -> str:
    return "external-data" if external_data else "self-contained"


def _member_files(proto: onnx.ModelProto, stem: str, external_data: bool) -> dict[str, bytes]:
    """File name -> bytes of one member's ONNX, in write order (the data file before the graph)."""
    if not external_data:
        return {f"{stem}.onnx": proto.SerializeToString()}
    graph, data = split_external(proto, f"{stem}.onnx.data")
    return {f"{stem}.onnx.data": data, f"{stem}.onnx": graph}


def _check_written(models_dir: Path, df: pd.DataFrame, expected: list[np.ndarray]) -> None:
    """The files on disk, loaded as `predict` loads them, give the scores that were verified in memory."""
    loaded = predict.load_members(models_dir)
    for member, want in zip(loaded, expected, strict=True):
        got = member.scores(df)
        if got.shape != want.shape or not np.array_equal(got, want):
            raise WorkFailed(f"{member.path}: the written member does not reproduce the verified scores",
                             hint="report this with the environment fingerprint")


def export_run(run_dir: str | Path, *, force: bool = False, corpus: str | Path | None = None,
               name: str | None = None, external_data: bool = False,
               progress: Callable[[int, int], None] | None = None,
               environment: tuple[dict[str, Any], str] | None = None, max_memory: int | None = None) -> dict[str, Any]:
    """`ensemble-kit export`: the run's corpus, seeds and config -> run_dir/models/ (PROMOTE or force).

    The corpus must be the one the verdict was computed on (same content sha256), so models never
    ride on a verdict about other data.
    """
    rd = RunDir(Path(run_dir))
    verdict = read_json(rd.verdict, what="verdict.json (run `ensemble-kit verdict` first)")
    if not isinstance(verdict, dict):
        raise BadInput(f"{rd.verdict} is not a verdict file", hint=f"rerun `ensemble-kit verdict --out-dir {rd.root}`")
    loso = load_loso(rd)
    provenance.check(rd, corpus=Path(corpus) if corpus else None, models=False, report=False)
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
    return export_ensemble(df, loso.config, loso.seeds, snapshot, rd.models_dir, force, name=name,
                           external_data=external_data, progress=progress, environment=environment,
                           max_memory=max_memory, inputs=provenance.downstream_inputs(rd, verdict))

