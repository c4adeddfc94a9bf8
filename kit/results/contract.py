"""The VMAF fork's fr_regressor_v2 contract, in one place: member names, sidecar keys, registry rows, and
the schemas that untrusted sidecars, manifests and fork verdict files are checked against.

What the fork reads (lusoris/vmaf at c2a3c7e0; docs/fork-contract.md says it in users' words):
  * a member `<id>.onnx` (self-contained, or with `<id>.onnx.data` beside it) with inputs `features`
    [batch, 6] (standardised by the caller) and `codec_onehot` [batch, 14], output `score` [batch];
  * its sidecar `<id>.json` with every key of the production sidecars (`sidecar`), `sha256` = the
    `.onnx` file's sha256, `kind: "fr"`;
  * registry rows valid against the fork's `registry.schema.json` (`registry_row`); the fork's tests
    require `gate.passed` and `smoke: false` for the production ids, so only a PROMOTE in vocab v2 may
    carry them (`ensemble_name`).

The fork's C loader reads the keys `kind`, `name`, `input_name`, `output_name`, `onnx_opset` and
`quant_mode` by their FIRST occurrence anywhere in the sidecar text (a strstr parser), so nothing we
add to a sidecar may contain those keys (`C_LOADER_KEYS`; the tests check it). Light: no torch.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema

from kit import __version__
from kit.core.console import printable_short, warn
from kit.core.errors import BadInput
from kit.core.schema import FEATURES
from kit.train.codec import DEFAULT_VOCAB, CodecSpec

PRODUCTION_NAME = "fr_regressor_v2_ensemble_v1"  # the ensemble this kit retrains; its members' ids are <name>_seed<N>
INPUT_NAMES: tuple[str, ...] = ("features", "codec_onehot")
OUTPUT_NAMES: tuple[str, ...] = ("score",)
BATCH_DIM = "batch"  # the symbolic batch dimension's name in the production graphs
OPSET = 17
KIND = "fr"
PARENT_ADRS: tuple[str, ...] = ("ADR-0303", "ADR-0309", "ADR-0319", "ADR-0321")  # the production sidecars'
# Copied verbatim from the production registry rows, so a dropped-in row reads like its neighbours.
LICENSE = "BSD-3-Clause-Plus-Patent"
LICENSE_URL = "https://github.com/lusoris/vmaf/blob/master/LICENSE"
REGISTRY_SCHEMA_REF = "./registry.schema.json"
REGISTRY_FILE = "registry.rows.json"  # in models/: the rows to add to the fork's model/tiny/registry.json
REGISTRY_NOTES_MAX = 512  # the registry schema's maxLength for `notes`
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # the registry schema's `id` pattern
ID_MAX = 64
C_LOADER_KEYS: tuple[str, ...] = ("kind", "name", "input_name", "output_name", "onnx_opset", "quant_mode")
EXTRAS_KEY = "ensemble_kit"  # the one sidecar key of our own (everything the fork's sidecars do not have)
NOT_PROMOTED_SUFFIX = "_unpromoted"


def member_id(name: str, seed: int) -> str:
    return f"{name}_seed{seed}"


def ensemble_name(name: str | None, *, promoted: bool, vocab: str) -> str:
    """The ensemble id for an export. The production id is only for what the fork may ship as production:
    a PROMOTE in vocab v2. Otherwise the default name says why it is not that, and an explicit production
    name is refused (the fork's registry tests would fail on it)."""
    production_ok = promoted and vocab == DEFAULT_VOCAB
    why = "the verdict is not PROMOTE" if not promoted else f"the codec vocabulary is {vocab}, not {DEFAULT_VOCAB}"
    if name is None:
        if production_ok:
            return PRODUCTION_NAME
        name = PRODUCTION_NAME + (f"_vocab_{vocab}" if vocab != DEFAULT_VOCAB else "") + (
            "" if promoted else NOT_PROMOTED_SUFFIX)
        warn(f"{why}: members are named {member_id(name, 0)}... instead of the production ids "
             f"{member_id(PRODUCTION_NAME, 0)}...")
        return name
    if name == PRODUCTION_NAME and not production_ok:
        raise BadInput(f"--name {name}: that is the production ensemble's id, and {why} (the fork's tests "
                       "require gate.passed, verdict PROMOTE and 14 codec columns for its members)",
                       hint="drop --name (the export then picks a name that says what it is) or pass another --name")
    longest = member_id(name, 9999)
    if not ID_PATTERN.match(name) or len(longest) > ID_MAX:
        raise BadInput(f"--name {name!r}: member ids <name>_seed<N> must match {ID_PATTERN.pattern} and stay within "
                       f"{ID_MAX} characters (the fork's registry schema)",
                       hint="use lower-case letters, digits, '_' and '-', e.g. --name my_ensemble_v1")
    return name


def training_recipe(config: dict[str, Any], *, depth: int, codec: CodecSpec) -> dict[str, Any]:
    """The production sidecars' `training_recipe`, with this run's values."""
    return {"batch_size": int(config["batch_size"]), "depth": int(depth), "dropout": float(config["dropout"]),
            "epochs": int(config["epochs"]), "fit_set": "full_corpus", "hidden": int(config["hidden"]),
            "in_features": len(FEATURES), "loss": "MSE", "lr": float(config["lr"]), "num_codecs": codec.vocab.width,
            "optimizer": "Adam", "scaler": "fit_on_full_corpus", "weight_decay": float(config["weight_decay"])}


def sidecar_gate(gate_snapshot: dict[str, Any], seed: int) -> dict[str, Any]:
    """The production sidecars' `gate` block, copied from this run's verdict (as the fork's exporter copies
    it from PROMOTE.json)."""
    gate = gate_snapshot.get("gate") if isinstance(gate_snapshot.get("gate"), dict) else {}
    per_seed = gate.get("per_seed_plccs") if isinstance(gate.get("per_seed_plccs"), dict) else {}
    return {"mean_plcc": gate.get("mean_plcc"), "mean_plcc_threshold": gate.get("mean_plcc_threshold"),
            "passed": bool(gate.get("passed")), "per_seed_min_threshold": gate.get("per_seed_min"),
            "plcc_spread": gate.get("plcc_spread"), "plcc_spread_max": gate.get("plcc_spread_max"),
            "this_seed_loso_plcc": per_seed.get(str(seed)), "verdict": gate_snapshot.get("verdict")}


def sidecar(*, name: str, seed: int, onnx_name: str, sha256: str, mean: list[float], std: list[float],
            codec: CodecSpec, recipe: dict[str, Any], corpus: dict[str, Any], gate: dict[str, Any], n_folds: int,
            extras: dict[str, Any]) -> dict[str, Any]:
    """A member sidecar with every key (and type) of the production ones, filled with this run's values."""
    verdict, mean_plcc = gate.get("verdict"), gate.get("mean_plcc")
    plcc_text = f"{mean_plcc:.4f}" if isinstance(mean_plcc, float) else "n/a"
    notes = (f"ensemble-kit {__version__} member of {name} (seed={seed}). Fit on the full corpus ({corpus['n_rows']} "
             f"rows) after the {n_folds}-fold LOSO gate said {verdict} (mean_plcc={plcc_text}). 6 canonical libvmaf "
             f"features ({', '.join(FEATURES)}) standardised with feature_mean/feature_std + {codec.vocab.width}-D "
             f"codec block ({len(codec.vocab.encoders)}-slot encoder one-hot {codec.vocab.name} + preset_norm + "
             f"crf_norm over cq {codec.cq_min:g}..{codec.cq_max:g}) -> VMAF.")
    return {
        "codec_aware": True,
        "codec_block_layout": list(codec.vocab.columns),
        "corpus": corpus,
        "encoder_vocab": list(codec.vocab.encoders),
        "encoder_vocab_version": codec.vocab.version,
        "ensemble_id": name,
        "feature_mean": [float(v) for v in mean],
        "feature_order": list(FEATURES),
        "feature_std": [float(v) for v in std],
        "gate": gate,
        "id": member_id(name, seed),
        "input_names": list(INPUT_NAMES),
        "kind": KIND,
        "loso_mean_plcc": mean_plcc,
        "notes": notes,
        "onnx": onnx_name,
        "opset": OPSET,
        "output_names": list(OUTPUT_NAMES),
        "parent_adrs": list(PARENT_ADRS),
        "seed": seed,
        "sha256": sha256,
        "training_recipe": recipe,
        EXTRAS_KEY: extras,
    }


def registry_row(*, member: str, onnx_name: str, sha256: str, seed: int, name: str, promoted: bool) -> dict[str, Any]:
    """One row for the fork's model/tiny/registry.json, in the production rows' shape."""
    notes = (f"ensemble-kit member of {name} (seed={seed}). Full-corpus fit after a "
             f"{'PROMOTE' if promoted else 'non-PROMOTE (forced)'} LOSO gate; see {member}.json.")
    return {"id": member, "kind": KIND, "license": LICENSE, "license_url": LICENSE_URL,
            "notes": notes[:REGISTRY_NOTES_MAX], "onnx": onnx_name, "opset": OPSET, "sha256": sha256,
            "sigstore_bundle": f"{onnx_name}.sigstore.json", "smoke": not promoted}


def registry_document(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"$schema": REGISTRY_SCHEMA_REF, "schema_version": 1, "models": rows}


# ---- checking what others hand us ----------------------------------------------------------------

_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_NUMBERS6 = {"type": "array", "items": {"type": "number"}, "minItems": len(FEATURES), "maxItems": len(FEATURES)}
_BASENAME = {"type": "string", "pattern": r"^[^/\\]+$", "not": {"enum": [".", ".."]}}

# What `predict` needs of a member sidecar (ours or the fork's): the fork's keys, typed.
SIDECAR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["onnx", "sha256", "feature_order", "feature_mean", "feature_std", "encoder_vocab",
                 "encoder_vocab_version", "corpus", "input_names", "output_names"],
    "properties": {
        "onnx": {**_BASENAME, "pattern": r"^[^/\\]+\.onnx$"},
        "sha256": _HEX64,
        "seed": {"type": "integer"},
        "id": {"type": "string"},
        "feature_order": {"const": list(FEATURES)},
        "feature_mean": _NUMBERS6,
        "feature_std": _NUMBERS6,
        "encoder_vocab": {"type": "array", "items": {"type": "string"}},
        "encoder_vocab_version": {"type": "integer"},
        "corpus": {"type": "object", "required": ["cq_min", "cq_max"],
                   "properties": {"cq_min": {"type": "number"}, "cq_max": {"type": "number"}}},
        "input_names": {"const": list(INPUT_NAMES)},
        "output_names": {"const": list(OUTPUT_NAMES)},
    },
}

# Our models/ensemble.json, as `predict` reads it (the members it lists and their hashes).
MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["members"],
    "properties": {"members": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["onnx", "sidecar", "sha256"],
        "properties": {"onnx": {**_BASENAME, "pattern": r"^[^/\\]+\.onnx$"}, "sidecar": _BASENAME, "sha256": _HEX64,
                       "onnx_data": _BASENAME, "onnx_data_sha256": _HEX64}}}},
}


_NUMBER_OR_NULL = {"type": ["number", "null"]}

# The fork's PROMOTE.json / HOLD.json (validate_ensemble_seeds.py, schema_version 1), as `compare` reads a lead's.
FORK_VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema_version", "verdict", "seeds", "gate"],
    "properties": {
        "schema_version": {"const": 1},
        "verdict": {"enum": ["PROMOTE", "HOLD"]},
        "generated_at_utc": {"type": "string"},
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "gate": {
            "type": "object",
            "required": ["passed", "mean_plcc", "mean_plcc_threshold", "mean_plcc_pass", "plcc_spread",
                         "plcc_spread_max", "plcc_spread_pass", "per_seed_plccs", "per_seed_min", "per_seed_pass",
                         "failing_seeds"],
            "properties": {
                "passed": {"type": "boolean"}, "mean_plcc": _NUMBER_OR_NULL, "mean_plcc_threshold": {"type": "number"},
                "mean_plcc_pass": {"type": "boolean"}, "plcc_spread": _NUMBER_OR_NULL,
                "plcc_spread_max": {"type": "number"}, "plcc_spread_pass": {"type": "boolean"},
                "per_seed_plccs": {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"},
                                   "additionalProperties": _NUMBER_OR_NULL},
                "per_seed_min": {"type": "number"}, "per_seed_pass": {"type": "boolean"},
                "failing_seeds": {"type": "array", "items": {"type": "integer"}},
            },
        },
    },
}


def check(doc: Any, schema: dict[str, Any], *, where: str, hint: str) -> None:
    """Validate untrusted JSON: the first problem as one line naming the file and the key."""
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise BadInput(f"{where}: {path}: {_short(exc.message)}", hint=hint) from None


def _short(text: str, limit: int = 160) -> str:
    """One printable line: jsonschema quotes the offending (untrusted) value, pretty-printed over lines."""
    return printable_short(" ".join(text.split()), limit)
