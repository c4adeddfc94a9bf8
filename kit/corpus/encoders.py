"""The one encoder table: encoder -> ffmpeg argv for a quality value `cq`, and everything else about encoders.

`cq` is always "lower = better", like x264's CRF; each family maps it onto its own knob and every
corpus row records the exact argument given (`quality_arg`) and the preset. Here too: which encoders
each host family tries (`FAMILY_ENCODERS`, also read by the distribution's `run` script), how many
sessions a hardware family takes, and how costly each encoder is. Files and processes are none of
this module's business (`kit.corpus.ffmpeg` probes which encoders really encode).

Adding an encoder: one `Encoder(...)` row below (and its family, if new); list it in `FAMILY_ENCODERS`
if a host family should try it by default. The model's codec vocabulary is the VMAF fork's, not this
table (`kit.train.codec.VOCABS`): an encoder it does not list is `unknown` to the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kit.core.console import warn
from kit.core.errors import BadInput

DEFAULT_CQS: tuple[int, ...] = (19, 25, 31, 37)


def _videotoolbox_q(cq: int) -> int:
    """VideoToolbox's -q:v is 1..100, higher = better: map cq 0..51 linearly and clamp."""
    return max(1, min(100, round((51 - cq) * 100 / 51)))


@dataclass(frozen=True)
class Family:
    """How one family of encoders expresses constant quality."""

    name: str
    cq_range: tuple[int, int]  # inclusive, in cq units
    quality_args: Callable[[int], list[str]]  # cq -> the ffmpeg arguments that set quality
    hw: str | None = None  # None (software), "cuda", "qsv", "vaapi", "videotoolbox"


FAMILIES: dict[str, Family] = {
    # Software CRF.
    "x26x": Family("x26x", (0, 51), lambda cq: ["-crf", str(cq)]),
    "svtav1": Family("svtav1", (1, 63), lambda cq: ["-crf", str(cq)]),
    # NVENC: VBR with a constant-quality target and *no* bitrate cap. ffmpeg's nvenc default
    # bitrate (2 Mb/s) would otherwise bound quality; -b:v 0 removes it. cq 0 means "auto" there,
    # so the range starts at 1.
    "nvenc": Family("nvenc", (1, 51), lambda cq: ["-rc", "vbr", "-cq", str(cq), "-b:v", "0", "-maxrate", "0"], hw="cuda"),
    "nvenc_av1": Family("nvenc_av1", (1, 63), lambda cq: ["-rc", "vbr", "-cq", str(cq), "-b:v", "0", "-maxrate", "0"], hw="cuda"),
    # QSV: ICQ, selected by global_quality with no bitrate given.
    "qsv": Family("qsv", (1, 51), lambda cq: ["-global_quality", str(cq)], hw="qsv"),
    # VAAPI: constant QP.
    "vaapi": Family("vaapi", (1, 51), lambda cq: ["-rc_mode", "CQP", "-qp", str(cq)], hw="vaapi"),
    # VideoToolbox: -q:v 1..100 (higher = better), mapped from cq; -realtime 0 for quality over speed.
    "videotoolbox": Family(
        "videotoolbox", (0, 51), lambda cq: ["-q:v", str(_videotoolbox_q(cq)), "-realtime", "0"], hw="videotoolbox"
    ),
}


@dataclass(frozen=True)
class Encoder:
    name: str  # ffmpeg encoder name, also the corpus `encoder` value
    family: str  # key into FAMILIES
    preset: str  # the preset we always use ("" where the encoder has none)
    extra: tuple[str, ...] = field(default=())  # fixed extra arguments (logging, tuning)
    cost: float = 1.0  # relative encode time: the longest cells start first, and hung-tool limits scale with it

    @property
    def quality_family(self) -> Family:
        return FAMILIES[self.family]

    @property
    def cq_range(self) -> tuple[int, int]:
        return self.quality_family.cq_range

    @property
    def hw(self) -> str | None:
        return self.quality_family.hw

    def quality_arg(self, cq: int) -> str:
        """The exact quality argument handed to ffmpeg, as recorded in corpus rows."""
        return " ".join(self.quality_family.quality_args(cq))

    def preset_args(self) -> list[str]:
        return ["-preset", self.preset] if self.preset else []

    def argv(self, cq: int) -> list[str]:
        """Output-side ffmpeg arguments (after the input and any hwupload filter) for this cq."""
        self.check_cq(cq)
        return ["-c:v", self.name, *self.preset_args(), *self.quality_family.quality_args(cq), *self.extra]

    def check_cq(self, cq: int) -> None:
        lo, hi = self.cq_range
        if not lo <= cq <= hi:
            raise BadInput(f"--cqs: {cq} is outside {self.name}'s range {lo}..{hi}", hint="pick cq values inside it")


ENCODERS: dict[str, Encoder] = {
    e.name: e
    for e in (
        Encoder("libx264", "x26x", "medium"),
        Encoder("libx265", "x26x", "medium", ("-x265-params", "log-level=error"), cost=3.0),
        Encoder("libsvtav1", "svtav1", "8", ("-svtav1-params", "lp=1"), cost=2.0),
        Encoder("h264_nvenc", "nvenc", "p5", ("-tune", "hq")),
        Encoder("hevc_nvenc", "nvenc", "p5", ("-tune", "hq")),
        Encoder("av1_nvenc", "nvenc_av1", "p5", ("-tune", "hq")),
        Encoder("h264_qsv", "qsv", "medium"),
        Encoder("hevc_qsv", "qsv", "medium"),
        Encoder("av1_qsv", "qsv", "medium"),
        Encoder("h264_vaapi", "vaapi", ""),
        Encoder("hevc_vaapi", "vaapi", ""),
        Encoder("h264_videotoolbox", "videotoolbox", ""),
        Encoder("hevc_videotoolbox", "videotoolbox", ""),
    )
}

SOFTWARE_ENCODERS: tuple[str, ...] = tuple(n for n, e in ENCODERS.items() if e.hw is None)

# Which encoders each host family (kit.env.platform.FAMILIES) tries, in preference order; only a real
# test encode decides which ones a run uses. Software encoders are the fallback everywhere.
FAMILY_ENCODERS: dict[str, tuple[str, ...]] = {
    "linux-cuda": ("h264_nvenc", "hevc_nvenc", "av1_nvenc"),
    "linux-sycl": ("h264_qsv", "hevc_qsv", "av1_qsv", "h264_vaapi", "hevc_vaapi"),
    "linux-cpu": ("libx264", "libx265", "libsvtav1"),
    "darwin": ("h264_videotoolbox", "hevc_videotoolbox"),
}
FALLBACK_ENCODER = "libx264"

# Concurrent sessions a hardware encoder family takes before it starts refusing (consumer NVENC: 3-8).
HW_SESSION_LIMITS: dict[str, int] = {"cuda": 3, "qsv": 4, "vaapi": 4, "videotoolbox": 2}

# NVIDIA data-centre GPUs built without NVENC (compute only): the test encode fails there by design.
NO_NVENC_GPUS = re.compile(r"\b(A100|A800|A30|H100|H800|H200|GH200)\b", re.I)
# NVENC AV1 needs Ada Lovelace (RTX 40xx, L4, L40) or newer.
NVENC_AV1_HINT = "NVENC AV1 needs an Ada Lovelace or newer GPU (RTX 40xx, L4, L40)"


def get(name: str) -> Encoder:
    try:
        return ENCODERS[name]
    except KeyError:
        raise BadInput(
            f"--encoders: unknown encoder {name!r}", hint=f"choose from {', '.join(ENCODERS)}"
        ) from None


def _once(flag: str, values: tuple[Any, ...]) -> tuple[Any, ...]:
    """Each value once, in the order given; a repeat is said, never silently doubled or dropped."""
    unique = tuple(dict.fromkeys(values))
    if len(unique) < len(values):
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        warn(f"{flag}: {', '.join(twice)} given more than once; using each once")
    return unique


def parse_encoders(text: str) -> tuple[str, ...]:
    """'libx264,libx265' -> ('libx264', 'libx265'); an unknown name or an empty list is bad input naming --encoders."""
    names = tuple(e.strip() for e in text.split(",") if e.strip())
    if not names:
        raise BadInput(f"--encoders {text!r} is empty",
                       hint=f"name one or more of {', '.join(ENCODERS)}, or leave --encoders out for this box's default")
    for name in names:
        get(name)
    return _once("--encoders", names)


def parse_cqs(text: str) -> tuple[int, ...]:
    """'19,25,31' -> (19, 25, 31); a non-integer, an empty list is bad input naming the flag."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BadInput(f"--cqs: {text!r} is not a comma-separated list of integers", hint="e.g. --cqs 19,25,31,37") from None
    if not values:
        raise BadInput(f"--cqs {text!r} is empty", hint="e.g. --cqs 19,25,31,37, or leave --cqs out for the default")
    return tuple(sorted(_once("--cqs", values)))


# Bitstream each encoder produces, and the raw elementary-stream muxer/demuxer we write it with: raw streams
# make enc_bytes the coded size (no container overhead) and are decoded straight back into libvmaf.
CODEC_STREAM_FORMAT: dict[str, str] = {"h264": "h264", "hevc": "hevc", "av1": "ivf"}


def codec_of(encoder: Encoder) -> str:
    """'h264' | 'hevc' | 'av1', from the ffmpeg encoder name."""
    name = encoder.name
    if name in ("libx264",) or name.startswith("h264_"):
        return "h264"
    if name in ("libx265",) or name.startswith("hevc_"):
        return "hevc"
    return "av1"


def hw_setup(encoder: Encoder, device: str | None, *, ten_bit: bool) -> tuple[list[str], str | None]:
    """(global ffmpeg args before the inputs, filter chain for the encoder input) for hardware families.

    QSV/VAAPI need frames uploaded to a device created on a render node (the one the probe found to work,
    never a hard-coded renderD129); NVENC and VideoToolbox take system-memory frames directly.
    """
    upload_fmt = "p010" if ten_bit and codec_of(encoder) != "h264" else "nv12"
    if encoder.hw == "vaapi":
        node = device or "/dev/dri/renderD128"
        return ["-init_hw_device", f"vaapi=va:{node}", "-filter_hw_device", "va"], f"format={upload_fmt},hwupload"
    if encoder.hw == "qsv":
        node = device or "/dev/dri/renderD128"
        return (["-init_hw_device", f"qsv=qs:hw_any,child_device={node}", "-filter_hw_device", "qs"],
                f"format={upload_fmt},hwupload=extra_hw_frames=64")
    return [], None
