"""The one feature list and the corpus row layout, imported everywhere (never re-typed)."""

from __future__ import annotations

# The six canonical libvmaf features the regressor sees, in model input order.
FEATURES: tuple[str, ...] = ("adm2", "vif_scale0", "vif_scale1", "vif_scale2", "vif_scale3", "motion2")
TARGET = "vmaf"

# libvmaf's per-frame JSON key for each canonical feature (integer_* feature extractors).
LIBVMAF_KEYS: dict[str, str] = {
    "vmaf": "vmaf",
    "adm2": "integer_adm2",
    "vif_scale0": "integer_vif_scale0",
    "vif_scale1": "integer_vif_scale1",
    "vif_scale2": "integer_vif_scale2",
    "vif_scale3": "integer_vif_scale3",
    "motion2": "integer_motion2",
}

DEFAULT_VMAF_MODEL = "vmaf_v0.6.1"

# One row per frame of one encode; order is the on-disk column order.
CORPUS_COLUMNS: dict[str, str] = {
    "src": "string",
    "src_sha256": "string",
    "width": "int64",
    "height": "int64",
    "pix_fmt": "string",
    "fps": "float64",
    "encoder": "string",
    "cq": "int64",
    "quality_arg": "string",
    "preset": "string",
    "enc_bytes": "int64",
    "bitrate_kbps": "float64",
    "enc_time_ms": "float64",
    "score_time_ms": "float64",
    "frame_index": "int64",
    "vmaf": "float64",
    "adm2": "float64",
    "vif_scale0": "float64",
    "vif_scale1": "float64",
    "vif_scale2": "float64",
    "vif_scale3": "float64",
    "motion2": "float64",
    "platform": "string",
    "box_id": "string",
    "ffmpeg_version": "string",
    "libvmaf_version": "string",
    "vmaf_model": "string",
    "env_fingerprint": "string",
    "cell_id": "string",
}

# The upstream (old bash) kit's per-frame JSONL columns: kept so its corpora import and ours export.
LEGACY_JSONL_COLUMNS: tuple[str, ...] = (
    "src", "encoder", "cq", "enc_bytes", "enc_time_ms", "frame_index", "vmaf", *FEATURES,
)

# Wall-clock measurements: they differ between two runs of the same cell, so they stay out of the
# corpus content hash (two boxes that computed the same rows must get the same hash).
MEASURED_COLUMNS: tuple[str, ...] = ("enc_time_ms", "score_time_ms")
# Who computed a row, not what it is: also out of the content hash, kept in the rows.
PROVENANCE_COLUMNS: tuple[str, ...] = ("platform", "box_id", "env_fingerprint")
CONTENT_COLUMNS: tuple[str, ...] = tuple(
    c for c in CORPUS_COLUMNS if c not in MEASURED_COLUMNS and c not in PROVENANCE_COLUMNS
)

# Rows are unique on this key across boxes and shards.
ROW_KEY: tuple[str, ...] = ("src_sha256", "encoder", "cq", "frame_index")

# Canonical row order for hashing and assembling.
SORT_KEY: tuple[str, ...] = ("src_sha256", "encoder", "cq", "frame_index")
