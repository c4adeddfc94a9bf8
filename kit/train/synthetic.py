"""A deterministic, plausible synthetic corpus for tests and the training benchmark.

Not a stand-in for real scoring (the corpus engine produces real corpora): rows have the corpus
layout and features that relate to VMAF the way libvmaf's do (higher adm2/vif -> higher vmaf,
quality falls with cq, sources differ in difficulty), so LOSO metrics behave like real ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kit.core.ids import sha256_hex, shorten
from kit.core.schema import CORPUS_COLUMNS
from kit.corpus.encoders import ENCODERS


def synthetic_corpus(
    n_sources: int = 9,
    frames: int = 24,
    encoders: tuple[str, ...] = ("libx264", "libx265", "libsvtav1"),
    cqs: tuple[int, ...] = (19, 25, 31, 37),
    seed: int = 0,
    noise: float = 1.0,
) -> pd.DataFrame:
    """n_sources x encoders x cqs encodes of `frames` frames each, with every CORPUS_COLUMNS column."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sources):
        src = f"synthetic_{s:02d}.y4m"
        sha = sha256_hex(f"synthetic:{seed}:{src}")
        difficulty = rng.uniform(0.0, 1.0)
        motion = rng.uniform(0.5, 12.0)
        for enc_i, enc in enumerate(encoders):
            efficiency = 1.0 + 0.15 * enc_i
            for cq in cqs:
                loss = (cq / 51.0) ** 1.6 * (0.6 + 0.8 * difficulty) / efficiency
                t = np.arange(frames)
                wobble = 0.02 * np.sin(t / 3.0 + s) + rng.normal(0, 0.01, frames)
                adm2 = np.clip(1.0 - 0.35 * loss + wobble, 0.3, 1.0)
                vif = [np.clip(1.0 - (0.9 - 0.15 * k) * loss * 1.4 + 0.5 * wobble, 0.05, 1.0) for k in range(4)]
                motion2 = np.clip(motion + rng.normal(0, 0.8, frames), 0.0, None)
                vmaf = np.clip(
                    100 * (0.55 * adm2 + 0.2 * vif[0] + 0.15 * vif[3] + 0.1) - 0.4 * motion2 * loss - 12
                    + rng.normal(0, noise, frames), 0, 100)
                enc_bytes = int(2e6 * np.exp(-cq / 9.0) * (1 + difficulty) / efficiency) * frames
                rows.append(pd.DataFrame({
                    "src": src, "src_sha256": sha, "width": 384, "height": 288, "pix_fmt": "yuv420p", "fps": 25.0,
                    "encoder": enc, "cq": cq, "quality_arg": ENCODERS[enc].quality_arg(cq), "preset": ENCODERS[enc].preset,
                    "enc_bytes": enc_bytes, "bitrate_kbps": enc_bytes * 8 / (frames / 25.0) / 1000,
                    "enc_time_ms": 10.0 * frames, "score_time_ms": 5.0 * frames, "frame_index": t,
                    "vmaf": vmaf, "adm2": adm2, "vif_scale0": vif[0], "vif_scale1": vif[1], "vif_scale2": vif[2],
                    "vif_scale3": vif[3], "motion2": motion2, "platform": "synthetic", "box_id": "synthetic",
                    "ffmpeg_version": "synthetic", "libvmaf_version": "synthetic", "vmaf_model": "vmaf_v0.6.1",
                    "env_fingerprint": "synthetic", "cell_id": f"{shorten(sha)}-{enc}-{cq}",
                }))
    df = pd.concat(rows, ignore_index=True)
    return df.astype(CORPUS_COLUMNS)[list(CORPUS_COLUMNS)]
