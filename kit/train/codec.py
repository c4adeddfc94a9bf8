"""The codec block, exactly as the VMAF fork's fr_regressor_v2 defines it: THE encoder vocabularies.

`codec_onehot` [N, len(vocab) + 2] = one-hot over the vocabulary, then `preset_norm`, then `crf_norm`:
  * v2 (the production vocab, 12 slots, block width 14): any encoder not listed goes to `unknown`;
  * v3 (ADR-0302, 16 slots, block width 18): it has no `unknown` slot, so an encoder outside it is bad
    input (the fork's v3 trainer folds it into libx264 silently; we refuse and suggest v2);
  * `preset_norm` is the constant 0.5 (the fork's corpora record no preset);
  * `crf_norm = (cq - cq_min) / (cq_max - cq_min)` over the WHOLE corpus being trained on, in float32 as
    the fork computes it (0.5 for every row when the range is under 1e-6). `cq_min`/`cq_max` go into
    every sidecar so a consumer can rebuild the column.

Everything a model needs to rebuild its codec block is a `CodecSpec` (vocab + cq range), recorded
wherever a model goes (LOSO summary, verdict, sidecars, ensemble manifest). Light on purpose (numpy
only): `TrainConfig` validates `--codec-vocab` against `VOCABS` at CLI import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from kit.core.errors import BadInput

UNKNOWN = "unknown"
PRESET_NORM = 0.5  # the fork's constant: its corpora record no preset
CQ_RANGE_EPS = 1e-6  # below this cq range every row's crf_norm is 0.5 (the fork's rule)


@dataclass(frozen=True)
class Vocab:
    """One encoder vocabulary of the fork: its slots in order, and where unlisted encoders go."""

    name: str  # "v2": the --codec-vocab spelling
    version: int  # the sidecars' `encoder_vocab_version`
    encoders: tuple[str, ...]
    unknown_slot: bool  # True: encoders outside the list go to the `unknown` slot; False: they are bad input

    @property
    def width(self) -> int:
        """Columns of the codec block: one per slot, then preset_norm and crf_norm."""
        return len(self.encoders) + 2

    @property
    def columns(self) -> tuple[str, ...]:
        """The fork's column labels (`codec_block_layout` in its sidecars)."""
        return (*(f"encoder_onehot[{e}]" for e in self.encoders), "preset_norm", "crf_norm")

    def slot(self, encoder: str) -> int | None:
        """The one-hot column of an encoder; None when it has no slot (and the vocab has no `unknown`)."""
        if encoder in self._index:
            return self._index[encoder]
        return self._index[UNKNOWN] if self.unknown_slot else None

    @cached_property
    def _index(self) -> dict[str, int]:
        return {e: i for i, e in enumerate(self.encoders)}

    def unseen(self, encoders: Sequence[str]) -> list[str]:
        """Encoders (sorted, distinct) that have no slot of their own: `unknown` in v2, refused in v3."""
        own = set(self.encoders) - {UNKNOWN}
        return sorted({str(e) for e in encoders} - own)


# The fork's vocabularies (lusoris/vmaf: ENCODER_VOCAB of train_fr_regressor_v2_ensemble_loso.py for v2,
# ENCODER_VOCAB_V3 of train_fr_regressor_v2.py / ADR-0302 for v3). The only vocabulary table in the kit.
VOCABS: dict[str, Vocab] = {
    "v2": Vocab("v2", 2, ("libx264", "libx265", "libsvtav1", "libvvenc", "libvpx-vp9", "h264_nvenc", "hevc_nvenc",
                          "av1_nvenc", "h264_qsv", "hevc_qsv", "av1_qsv", UNKNOWN), unknown_slot=True),
    "v3": Vocab("v3", 3, ("libx264", "libaom-av1", "libx265", "h264_nvenc", "hevc_nvenc", "av1_nvenc", "h264_amf",
                          "hevc_amf", "av1_amf", "h264_qsv", "hevc_qsv", "av1_qsv", "libvvenc", "libsvtav1",
                          "h264_videotoolbox", "hevc_videotoolbox"), unknown_slot=False),
}
DEFAULT_VOCAB = "v2"  # the production ensemble's


def vocab_named(name: str) -> Vocab:
    try:
        return VOCABS[name]
    except KeyError:
        raise BadInput(f"--codec-vocab: unknown vocabulary {name!r}", hint=f"use one of: {', '.join(VOCABS)}") from None


def vocab_of(encoders: Any, version: Any, *, where: str) -> Vocab:
    """The vocabulary a sidecar declares (`encoder_vocab` + `encoder_vocab_version`), if the kit knows it."""
    for vocab in VOCABS.values():
        if vocab.version == version and list(vocab.encoders) == encoders:
            return vocab
    known = ", ".join(f"{v.name} ({len(v.encoders)} slots)" for v in VOCABS.values())
    raise BadInput(f"{where}: encoder_vocab (version {version!r}) is not a vocabulary ensemble-kit knows",
                   hint=f"a member must use one of the fork's vocabularies: {known}")


def cq_range(cq: np.ndarray) -> tuple[float, float]:
    """(cq_min, cq_max) of a corpus, as the fork takes them: from the cq column cast to float32."""
    cqs = np.asarray(cq).astype(np.float32)
    if not len(cqs):
        raise BadInput("the corpus has no rows, so it has no cq range", hint="pass a corpus with rows")
    return float(cqs.min()), float(cqs.max())


@dataclass(frozen=True)
class CodecSpec:
    """Everything that turns (encoder, cq) into a model's codec block: the vocabulary and the corpus cq range."""

    vocab: Vocab
    cq_min: float
    cq_max: float

    @classmethod
    def of_corpus(cls, cq: np.ndarray, vocab: str | Vocab = DEFAULT_VOCAB) -> CodecSpec:
        lo, hi = cq_range(cq)
        return cls(vocab if isinstance(vocab, Vocab) else vocab_named(vocab), lo, hi)

    def crf_norm(self, cq: np.ndarray) -> np.ndarray:
        """The fork's arithmetic: float32 cq, Python-float bounds (so float32 results)."""
        cqs = np.asarray(cq).astype(np.float32)
        if self.cq_max - self.cq_min < CQ_RANGE_EPS:
            return np.full_like(cqs, 0.5)
        return (cqs - self.cq_min) / (self.cq_max - self.cq_min)

    def block(self, encoders: Sequence[str] | np.ndarray, cq: np.ndarray) -> np.ndarray:
        """[N, vocab.width] float32: one-hot encoder, preset_norm 0.5, crf_norm. An encoder with no slot in
        a vocabulary without `unknown` (v3) is bad input naming it."""
        names = [str(e) for e in encoders]
        missing = [] if self.vocab.unknown_slot else self.vocab.unseen(names)
        if missing:
            raise BadInput(
                f"encoder(s) {', '.join(missing)} have no slot in codec vocabulary {self.vocab.name} "
                f"(it has no 'unknown' slot)",
                hint="use --codec-vocab v2, whose 'unknown' slot takes any encoder (the production vocabulary)")
        slots = {e: self.vocab.slot(e) for e in set(names)}
        onehot = np.zeros((len(names), len(self.vocab.encoders)), dtype=np.float32)
        onehot[np.arange(len(names)), [slots[e] for e in names]] = 1.0
        preset = np.full((len(names), 1), PRESET_NORM, dtype=np.float32)
        return np.concatenate([onehot, preset, self.crf_norm(cq)[:, None]], axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """What the LOSO summary, the verdict and the manifests record about the codec block."""
        return {"vocab": self.vocab.name, "encoder_vocab": list(self.vocab.encoders),
                "encoder_vocab_version": self.vocab.version, "codec_block_layout": list(self.vocab.columns),
                "num_codecs": self.vocab.width, "cq_min": self.cq_min, "cq_max": self.cq_max,
                "preset_norm": PRESET_NORM}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str) -> CodecSpec:
        vocab = vocab_of(data.get("encoder_vocab"), data.get("encoder_vocab_version"), where=where)
        return cls(vocab, float(data["cq_min"]), float(data["cq_max"]))
