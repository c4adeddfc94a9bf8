"""The model's codec block: a one-hot over the encoder vocabulary, then preset_norm and cq_norm.

The vocabulary follows the encoder table (`kit.corpus.encoders.ENCODERS`) plus `unknown`. Bump
VOCAB_VERSION whenever the list changes: every model sidecar records it, so a consumer can tell which
column means which encoder. (A seam for the codec-block rework: everything about it lives here.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kit.corpus.encoders import ENCODERS

VOCAB_VERSION = 1
UNKNOWN = "unknown"
VOCAB: tuple[str, ...] = (*ENCODERS, UNKNOWN)
CODEC_COLUMNS: tuple[str, ...] = (*(f"onehot:{v}" for v in VOCAB), "preset_norm", "cq_norm")
N_CODEC = len(VOCAB) + 2  # one-hot vocab, preset_norm, cq_norm
NEUTRAL_PRESET = 0.5  # preset_norm for rows that do not record their preset (old-kit imports)


def codec_inputs(encoder: str, cq: int, preset: str | None = None) -> tuple[float, float]:
    """(preset_norm, cq_norm) of one encode; unknown encoders get neutral values."""
    enc = ENCODERS.get(encoder)
    if enc is None:
        return 0.5, max(0.0, min(1.0, cq / 51))
    return enc.preset_norm, max(0.0, min(1.0, enc.cq_norm(cq)))


def codec_block(df: pd.DataFrame, vocab: tuple[str, ...] | list[str] = VOCAB) -> np.ndarray:
    """[N, len(vocab)+2]: one-hot encoder (names not in vocab -> 'unknown'), preset_norm, cq_norm.

    preset_norm comes from the encoder table; a row with no recorded preset (old-kit JSONL) gets the
    neutral 0.5 for encoders that have presets, rather than a guess.

    `vocab` defaults to this kit's; a model sidecar's own vocab can be passed to feed older models.
    """
    n = len(df)
    block = np.zeros((n, len(vocab) + 2), dtype=np.float32)
    index = {name: i for i, name in enumerate(vocab)}
    enc = df["encoder"].to_numpy()
    cq = df["cq"].to_numpy()
    preset = df["preset"].to_numpy() if "preset" in df.columns else np.full(n, "")
    cache: dict[tuple[str, int, str], tuple[float, float]] = {}
    for i in range(n):
        key = (enc[i], int(cq[i]), preset[i])
        if key not in cache:
            preset_norm, cq_norm = codec_inputs(enc[i], int(cq[i]), preset[i] or None)
            if not preset[i] and enc[i] in ENCODERS and ENCODERS[enc[i]].preset:
                preset_norm = NEUTRAL_PRESET  # an old corpus never said which preset it used
            cache[key] = (preset_norm, cq_norm)
        block[i, index.get(enc[i], index[UNKNOWN])] = 1.0
        block[i, -2], block[i, -1] = cache[key]
    return block


def codec_layout() -> dict[str, Any]:
    return {"vocab": list(VOCAB), "vocab_version": VOCAB_VERSION, "columns": list(CODEC_COLUMNS)}
