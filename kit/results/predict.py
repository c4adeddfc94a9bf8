"""Run any fr_regressor_v2 ensemble member with onnxruntime (no torch): the fork's production members and ours.

A models folder is read through our `ensemble.json` when it has one (every listed file's sha256 checked),
otherwise every `<name>_seed<N>.json` sidecar with its `.onnx` beside it is a member (the fork's model/tiny/
layout, where other models' files are left alone). Each member is fed as the fork's consumers feed it: the six features standardised with the
sidecar's `feature_mean`/`feature_std` (in float64, then cast to float32, as the fork's trainer does),
and the codec block built from the sidecar's vocabulary and cq range (`kit.train.codec.CodecSpec`).

Everything in the folder is untrusted: sidecars and the manifest are checked against schemas, the
`.onnx` against its sha256, and external data (`.onnx.data`) is read by us, only from a plain file name
inside the member's folder; a `location` elsewhere is refused, never followed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from scipy import stats

from kit.core.console import warn
from kit.core.errors import BadInput
from kit.core.fsio import read_json, sha256_bytes, sha256_file, write_with
from kit.core.rundir import ENSEMBLE_JSON
from kit.core.schema import FEATURES
from kit.results import contract
from kit.train.codec import UNKNOWN, CodecSpec, vocab_of
from kit.train.data import SCALER_MIN_STD, canonical_order, features, normalise

MEMBER_STEM = re.compile(r"^(.+)_seed[0-9]+$")  # an ensemble member's file stem (the fork's and ours)
MAX_MEMBER_BYTES = 50 << 20  # the fork's C loader refuses models above 50 MB; so do we (graph + data)
SCORE_RANGE = (0.0, 100.0)
SIDECAR_HINT = "a member sidecar needs the fork's keys (docs/fork-contract.md); re-export it with `ensemble-kit export`"


def scores_from_bytes(onnx_bytes: bytes, feats: np.ndarray, codec: np.ndarray) -> np.ndarray:
    """One member's `score` for already-standardised features and a codec block (self-contained bytes)."""
    return _session(onnx_bytes).run(["score"], {"features": feats.astype(np.float32),
                                                "codec_onehot": codec.astype(np.float32)})[0]


def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def sidecar_codec(sidecar: dict[str, Any], *, where: str) -> CodecSpec:
    """The codec block a sidecar declares: its vocabulary (one the kit knows) and its corpus cq range."""
    vocab = vocab_of(sidecar.get("encoder_vocab"), sidecar.get("encoder_vocab_version"), where=where)
    corpus = sidecar["corpus"]
    return CodecSpec(vocab, float(corpus["cq_min"]), float(corpus["cq_max"]))


def standardise(raw: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """The fork's consumer-side scaler: (x - mean) / std in float64 (std < 1e-8 -> 1), then float32."""
    mean64 = np.asarray(mean, dtype=np.float64)
    std64 = np.asarray(std, dtype=np.float64)
    std64 = np.where(std64 < SCALER_MIN_STD, 1.0, std64)
    return ((np.asarray(raw, dtype=np.float64) - mean64) / std64).astype(np.float32)


def member_inputs(df: pd.DataFrame, sidecar: dict[str, Any], *, where: str = "sidecar") -> tuple[np.ndarray, np.ndarray]:
    """(features, codec_onehot) for these rows, exactly as a member with this sidecar must be fed."""
    codec = sidecar_codec(sidecar, where=where)
    feats = standardise(features(df), sidecar["feature_mean"], sidecar["feature_std"])
    return feats, codec.block(df["encoder"].to_numpy(), df["cq"].to_numpy())


@dataclass
class Member:
    path: Path  # the .onnx
    sidecar: dict[str, Any]
    codec: CodecSpec
    session: ort.InferenceSession

    @property
    def id(self) -> str:
        return str(self.sidecar.get("id") or self.path.stem)

    @property
    def seed(self) -> int | None:
        seed = self.sidecar.get("seed")
        return seed if isinstance(seed, int) else None

    def scores(self, df: pd.DataFrame) -> np.ndarray:
        feats, codec = member_inputs(df, self.sidecar, where=str(self.path.with_suffix(".json")))
        return self.session.run(["score"], {"features": feats, "codec_onehot": codec})[0]


def _plain_name(value: str, folder: Path, *, what: str, where: str) -> Path:
    """A file named by an untrusted document: a plain name of a regular file inside `folder`, or bad input."""
    name = str(value)
    candidate = folder / name
    inside = "/" not in name and "\\" not in name and name not in ("", ".", "..")
    if inside and candidate.exists():
        inside = candidate.resolve().parent == folder.resolve()
    if not inside:
        raise BadInput(f"{where}: {what} {name!r} is not a file inside {folder} (refused, not followed)",
                       hint="a member's files must sit beside its .onnx under their plain names")
    if not candidate.is_file():
        raise BadInput(f"{where}: {what} {name} is missing from {folder}",
                       hint="copy every file of the member (.onnx, .onnx.data, .json) into one folder")
    if candidate.stat().st_size > MAX_MEMBER_BYTES:
        raise BadInput(f"{candidate}: larger than {MAX_MEMBER_BYTES >> 20} MB, not an fr_regressor_v2 member",
                       hint="pass the folder of the ensemble's members")
    return candidate


def _tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Every tensor of a graph: initializers and node attributes, subgraphs included."""
    out = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            out += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                out += _tensors(sub)
    return out


def _inline_external_data(proto: onnx.ModelProto, folder: Path, where: str, data_sha: dict[str, str]) -> None:
    """Read external tensors ourselves, only from plain names inside `folder`, and inline them (so
    onnxruntime, which runs the model from bytes, never resolves a path)."""
    for tensor in _tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        path = _plain_name(info.get("location", ""), folder, what="external data", where=where)
        if path.name in data_sha and sha256_file(path) != data_sha[path.name]:
            raise BadInput(f"{path}: sha256 differs from {ENSEMBLE_JSON} (file changed)", hint="re-export the models")
        try:
            offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else path.stat().st_size
        except ValueError:
            raise BadInput(f"{where}: external data entry of {tensor.name} has a bad offset/length",
                           hint="re-export the member") from None
        if offset < 0 or length < 0 or offset + length > path.stat().st_size:
            raise BadInput(f"{where}: external data of {tensor.name} lies outside {path.name}", hint="re-export the member")
        with open(path, "rb") as fh:
            fh.seek(offset)
            tensor.raw_data = fh.read(length)
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _input_widths(proto: onnx.ModelProto) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        out[value.name] = dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None
    return out


def load_member(onnx_path: Path, sidecar: dict[str, Any], *, sidecar_where: str, data_sha: dict[str, str] | None = None
                ) -> Member:
    """One member, every untrusted part checked; the graph's widths must be what its sidecar says."""
    contract.check(sidecar, contract.SIDECAR_SCHEMA, where=sidecar_where, hint=SIDECAR_HINT)
    folder = onnx_path.parent
    path = _plain_name(sidecar["onnx"], folder, what="onnx", where=sidecar_where)
    data = path.read_bytes()
    if sha256_bytes(data) != sidecar["sha256"]:
        raise BadInput(f"{path}: sha256 differs from its sidecar {sidecar_where} (file changed)",
                       hint="copy the member's .onnx and .json from the same export")
    if not all(math.isfinite(v) for v in (*sidecar["feature_mean"], *sidecar["feature_std"])) or min(sidecar["feature_std"]) <= 0:
        raise BadInput(f"{sidecar_where}: feature_mean/feature_std must be finite with std > 0", hint=SIDECAR_HINT)
    codec = sidecar_codec(sidecar, where=sidecar_where)
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is bad input naming it
        raise BadInput(f"{path}: not an ONNX model ({type(exc).__name__})", hint="re-export the member") from None
    _inline_external_data(proto, folder, str(path), data_sha or {})
    widths = _input_widths(proto)
    if set(widths) != set(contract.INPUT_NAMES) or [o.name for o in proto.graph.output] != list(contract.OUTPUT_NAMES):
        raise BadInput(f"member {path.stem}: its graph has inputs {sorted(widths)} and outputs "
                       f"{[o.name for o in proto.graph.output]}, not features/codec_onehot -> score",
                       hint="only fr_regressor_v2 ensemble members can be run by `predict`")
    if widths["features"] != len(FEATURES) or widths["codec_onehot"] != codec.vocab.width:
        raise BadInput(f"member {path.stem}: its graph takes features [N, {widths['features']}] and codec_onehot "
                       f"[N, {widths['codec_onehot']}], but its sidecar's vocabulary {codec.vocab.name} makes "
                       f"[N, {len(FEATURES)}] and [N, {codec.vocab.width}]",
                       hint="the .onnx and .json come from different exports; copy both from the same one")
    try:
        session = _session(proto.SerializeToString())
    except Exception as exc:  # noqa: BLE001 - onnxruntime refusing a file is bad input naming it
        raise BadInput(f"{path}: onnxruntime cannot load it ({type(exc).__name__})", hint="re-export the member") from None
    return Member(path, sidecar, codec, session)


def load_members(models_dir: str | Path) -> list[Member]:
    """The members of a models folder: the ones ensemble.json lists (hashes checked), else every
    `<id>.json` with `<id>.onnx` beside it."""
    folder = Path(models_dir)
    if not folder.is_dir():
        raise BadInput(f"--models {folder}: not a folder", hint="pass the folder holding the members (e.g. runs/demo/models)")
    manifest_path = folder / ENSEMBLE_JSON
    members: list[Member] = []
    if manifest_path.is_file():
        manifest = read_json(manifest_path, what=f"models/{ENSEMBLE_JSON}")
        contract.check(manifest, contract.MANIFEST_SCHEMA, where=str(manifest_path),
                       hint="rerun `ensemble-kit export`, or remove ensemble.json to read the sidecars alone")
        for entry in manifest["members"]:
            onnx_path = _plain_name(entry["onnx"], folder, what="member", where=str(manifest_path))
            if sha256_file(onnx_path) != entry["sha256"]:
                raise BadInput(f"{onnx_path}: sha256 differs from {ENSEMBLE_JSON} (file changed)",
                               hint="rerun `ensemble-kit export`")
            side_path = _plain_name(entry["sidecar"], folder, what="sidecar", where=str(manifest_path))
            data_sha = {entry["onnx_data"]: entry["onnx_data_sha256"]} if "onnx_data_sha256" in entry else {}
            members.append(load_member(onnx_path, read_json(side_path, what="member sidecar"),
                                       sidecar_where=str(side_path), data_sha=data_sha))
    else:
        found = [p for p in sorted(folder.glob("*.json")) if MEMBER_STEM.match(p.stem) and p.with_suffix(".onnx").is_file()]
        ensembles = sorted({MEMBER_STEM.match(p.stem).group(1) for p in found})
        if len(ensembles) > 1:
            raise BadInput(f"--models {folder}: holds members of {len(ensembles)} ensembles ({', '.join(ensembles)})",
                           hint="copy one ensemble's <id>_seed<N>.onnx/.json into a folder of its own")
        for side_path in found:
            members.append(load_member(side_path.with_suffix(".onnx"), read_json(side_path, what="member sidecar"),
                                       sidecar_where=str(side_path)))
    if not members:
        raise BadInput(f"--models {folder}: no members (no {ENSEMBLE_JSON}, no <id>_seed<N>.onnx with its .json beside it)",
                       hint="pass the folder `ensemble-kit export` wrote, or one holding fork members and their sidecars")
    seeds = [m.seed for m in members]
    twice = sorted({s for s in seeds if s is not None and seeds.count(s) > 1})
    if twice:
        names = ", ".join(m.id for m in members if m.seed == twice[0])
        raise BadInput(f"--models {folder}: more than one member has seed {twice[0]} ({names})",
                       hint="keep one ensemble per folder")
    return members


def _warn_about_rows(df: pd.DataFrame, members: list[Member], stack: np.ndarray) -> None:
    """What makes predictions extrapolations: encoders the members never saw, cqs outside their range,
    scores outside [0, 100]."""
    encoders = df["encoder"].astype(str)
    for codec in {m.codec for m in members}:
        unseen = codec.vocab.unseen(encoders.unique().tolist())
        if unseen:
            n = int(encoders.isin(unseen).sum())
            warn(f"{n} row(s) have encoder(s) the members never saw ({', '.join(unseen)}): vocabulary "
                 f"{codec.vocab.name} feeds them as '{UNKNOWN}', so their predictions are extrapolations")
        outside = (df["cq"] < codec.cq_min) | (df["cq"] > codec.cq_max)
        if outside.any():
            warn(f"{int(outside.sum())} row(s) have cq outside the members' training range "
                 f"{codec.cq_min:g}..{codec.cq_max:g}: crf_norm leaves [0, 1] for them")
    lo, hi = SCORE_RANGE
    bad = (stack < lo) | (stack > hi)
    if bad.any():
        warn(f"{int(bad.any(axis=0).sum())} row(s) have member predictions outside [{lo:g}, {hi:g}] "
             f"(min {float(stack.min()):.2f}, max {float(stack.max()):.2f})")


def predict_ensemble(models_dir: str | Path, corpus_df: pd.DataFrame) -> pd.DataFrame:
    """Every member's score per row, their mean, std (ddof=1) and a 95% interval of the mean.

    Interval: mean +- t(0.975, n-1) * std / sqrt(n) over the n members (NaN with one member).
    """
    members = load_members(models_dir)
    df = canonical_order(normalise(corpus_df))
    out = pd.DataFrame({c: df[c] for c in ("src", "src_sha256", "encoder", "cq", "frame_index") if c in df.columns})
    if "vmaf" in df.columns:
        out["vmaf"] = df["vmaf"].to_numpy()
    scores = []
    for i, member in enumerate(members):
        s = member.scores(df).astype(np.float64)
        out[f"pred_seed{member.seed}" if member.seed is not None else f"pred_member{i}"] = s
        scores.append(s)
    stack = np.vstack(scores)
    _warn_about_rows(df, members, stack)
    n = stack.shape[0]
    mean = stack.mean(axis=0)
    std = stack.std(axis=0, ddof=1) if n > 1 else np.full(stack.shape[1], np.nan)
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else np.full(stack.shape[1], np.nan)
    out["pred_mean"], out["pred_std"] = mean, std
    out["pred_ci95_low"], out["pred_ci95_high"] = mean - half, mean + half
    return out


def write_predictions(df: pd.DataFrame, path: str | Path) -> None:
    """Atomically write predictions as .csv or .parquet (by suffix)."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        write_with(p, lambda tmp: df.to_csv(tmp, index=False, lineterminator="\n", float_format="%.9g"))
    else:
        write_with(p, lambda tmp: df.to_parquet(tmp, index=False))
