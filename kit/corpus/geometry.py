"""Frame geometry, defined once: raw pixel layouts, frame sizes, exact frame rates, sizes from names.

Used by sources (probing references), scoring (the layout libvmaf sees), reference packs (raw frames
and Y4M headers) and the demo (`--demo-size`). Pure functions: no files, no processes.
"""

from __future__ import annotations

import re
from fractions import Fraction

from kit.core.console import printable_short
from kit.core.errors import BadInput

# Raw layouts we can size: pix_fmt -> (chroma subsampling (x, y) shifts or None for no chroma, bytes/sample).
RAW_PIX_FMTS: dict[str, tuple[tuple[int, int] | None, int]] = {
    "yuv420p": ((1, 1), 1), "yuv422p": ((1, 0), 1), "yuv444p": ((0, 0), 1), "gray": (None, 1),
    "yuv420p10le": ((1, 1), 2), "yuv422p10le": ((1, 0), 2), "yuv444p10le": ((0, 0), 2), "gray10le": (None, 2),
    "yuv420p12le": ((1, 1), 2), "yuv422p12le": ((1, 0), 2), "yuv444p12le": ((0, 0), 2),
    "yuv420p16le": ((1, 1), 2), "yuv444p16le": ((0, 0), 2),
}

# Y4M colourspace tag -> pix_fmt.
Y4M_COLORSPACES: dict[str, str] = {
    "420jpeg": "yuv420p", "420paldv": "yuv420p", "420mpeg2": "yuv420p", "420": "yuv420p",
    "422": "yuv422p", "444": "yuv444p", "mono": "gray",
    "420p10": "yuv420p10le", "422p10": "yuv422p10le", "444p10": "yuv444p10le", "mono10": "gray10le",
    "420p12": "yuv420p12le", "422p12": "yuv422p12le", "444p12": "yuv444p12le", "420p16": "yuv420p16le",
    "444p16": "yuv444p16le",
}
# pix_fmt -> the Y4M tag we write: the first tag per format (C420jpeg for yuv420p, as ffmpeg writes).
Y4M_TAG: dict[str, str] = {}
for _tag, _fmt in Y4M_COLORSPACES.items():
    Y4M_TAG.setdefault(_fmt, _tag)

# Y4M's colour-range extension tag <-> ffmpeg's color_range ("pc" full, "tv" limited).
Y4M_COLOR_RANGE: dict[str, str] = {"XCOLORRANGE=FULL": "pc", "XCOLORRANGE=LIMITED": "tv"}

# libvmaf takes these planar layouts; anything else is converted (both sides the same way).
VMAF_PIX_FMTS = frozenset({"yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le", "yuv444p10le",
                           "yuv420p12le", "yuv422p12le", "yuv444p12le", "yuv420p16le", "yuv422p16le", "yuv444p16le"})


def chroma_shift(pix_fmt: str) -> tuple[int, int]:
    """(x, y) chroma subsampling shifts of a pixel format: (1, 1) for 4:2:0, (1, 0) for 4:2:2, (0, 0) for 4:4:4/grey."""
    if pix_fmt in RAW_PIX_FMTS:
        return RAW_PIX_FMTS[pix_fmt][0] or (0, 0)
    if re.search(r"420|nv12|nv21|p010|p016|p012", pix_fmt):
        return (1, 1)
    if re.search(r"411", pix_fmt):
        return (2, 0)
    if re.search(r"422|yuyv|uyvy|nv16|y210", pix_fmt):
        return (1, 0)
    return (0, 0)


def frame_bytes(width: int, height: int, pix_fmt: str, where: object = None) -> int:
    """Bytes of one raw planar frame. `where`: the file the geometry is for, named when the layout is unknown."""
    try:
        sub, bps = RAW_PIX_FMTS[pix_fmt]
    except KeyError:
        named = f"{where}: " if where is not None else ""
        raise BadInput(f"{named}pix_fmt {printable_short(str(pix_fmt), 40)!r} is not a raw layout ensemble-kit can size",
                       hint=f"use one of {', '.join(RAW_PIX_FMTS)}") from None
    luma = width * height
    if sub is None:
        return luma * bps
    cw, ch = -(-width // (1 << sub[0])), -(-height // (1 << sub[1]))
    return (luma + 2 * cw * ch) * bps


MAX_FPS = 1000  # above this a "frame rate" is a typo or a broken header

# libvmaf's smallest frame side: measured with imageio-ffmpeg's libvmaf (86da14d), any pixel format and thread
# count, 18x18 and 100x18 score while 17x100, 100x17 and 16x16 kill ffmpeg with SIGSEGV, no message.
MIN_VMAF_SIDE = 18


def check_vmaf_size(name: str, width: int, height: int) -> None:
    """Bad input (before anything is encoded or scored) for a frame libvmaf cannot score: it crashes on it."""
    if min(width, height) < MIN_VMAF_SIDE:
        raise BadInput(f"{name} is {width}x{height}: libvmaf cannot score frames under {MIN_VMAF_SIDE} pixels a "
                       "side (its ffmpeg crashes on them); nothing was encoded or scored",
                       hint=f"scale it up (ffmpeg ... -vf scale=w='max(iw,{MIN_VMAF_SIDE})':h='max(ih,{MIN_VMAF_SIDE})') "
                            "and use that file")


def parse_rate(value: object, where: str) -> Fraction:
    """A frame rate as the exact rational it stands for: 25 -> 25, '26.777' or 26.777 -> 26777/1000,
    '30000/1001' -> 30000/1001 (decimals are read as written, never rounded to a nearby fraction; a float
    with more digits than anyone types, like 29.97002997002997, is taken as the fraction it approximates).
    Bad input naming `where` unless it is a finite number above 0 and at most MAX_FPS."""
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str | Fraction):
            raise ValueError(value)
        rate = Fraction(value.strip() if isinstance(value, str) else str(value) if isinstance(value, float) else value)
    except (ValueError, ZeroDivisionError):
        raise BadInput(f"{where}: frame rate {value!r} is not a number or a fraction like 30000/1001",
                       hint="e.g. 25, 29.97 or 30000/1001") from None
    if rate.denominator > 1_000_000:
        rate = rate.limit_denominator(1001)
    if not 0 < rate <= MAX_FPS:
        raise BadInput(f"{where}: frame rate {value!r} is not above 0 and at most {MAX_FPS}", hint="e.g. 25 or 30000/1001")
    return rate


def rate_text(rate: Fraction) -> str:
    """The exact text of a rate for ffmpeg, refs.json and cell ids: '25', '26777/1000', '30000/1001'."""
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def fps_arg(fps: float) -> str:
    """25.0 -> '25', 29.97002997 -> '30000/1001': a float rate (whose exact value is lost) as ffmpeg's rational."""
    return rate_text(Fraction(fps).limit_denominator(1001))


def bit_depth(pix_fmt: str) -> int:
    m = re.search(r"p(\d+)(?:le|be)$", pix_fmt)
    return int(m.group(1)) if m else 8


def vmaf_pix_fmt(pix_fmt: str) -> str:
    """The libvmaf layout a source is scored in: its own when libvmaf takes it, else 4:2:0 of its depth."""
    if pix_fmt in VMAF_PIX_FMTS:
        return pix_fmt
    if pix_fmt.startswith("yuvj4"):
        return pix_fmt.replace("yuvj", "yuv")
    return "yuv420p10le" if any(t in pix_fmt for t in ("10", "p010", "12", "16")) else "yuv420p"


def vmaf_raw_layout(pix_fmt: str) -> tuple[str, int]:
    """A libvmaf layout as the vmaf CLI's raw-input flags: 'yuv420p10le' -> ('420', 10) for -p / -b."""
    m = re.fullmatch(r"yuv(420|422|444)p(?:(\d+)le)?", pix_fmt)
    if pix_fmt not in VMAF_PIX_FMTS or not m:
        raise BadInput(f"pix_fmt {pix_fmt!r} is not a layout libvmaf takes", hint=f"use one of {', '.join(sorted(VMAF_PIX_FMTS))}")
    return m.group(1), int(m.group(2) or 8)


# ---- geometry from names -------------------------------------------------------------------------


class NameAmbiguity(ValueError):
    """A file name that states two different sizes or frame rates (the message says which)."""

_SIZE_RE = re.compile(r"(?<![0-9])(\d{2,5})x(\d{2,5})(?![0-9])")
_FPS_RE = re.compile(r"(?<![0-9.])(\d{1,3}(?:\.\d+)?)\s*fps", re.I)
_PIXFMT_RE = re.compile("|".join(sorted(RAW_PIX_FMTS, key=len, reverse=True)))


def geometry_from_name(name: str) -> dict[str, object]:
    """'foo_1920x1080_50fps_10bit.yuv' -> {width, height, fps, pix_fmt}; only what the name says. A name
    that says two different sizes (or rates), like clip_64x96_from_96x64.yuv, says neither: bad input
    naming both (a flag or a sidecar settles it, see kit.corpus.sources)."""
    out: dict[str, object] = {}
    sizes = list(dict.fromkeys((int(w), int(h)) for w, h in _SIZE_RE.findall(name)))
    rates = list(dict.fromkeys(_FPS_RE.findall(name)))
    if len(sizes) > 1 or len(rates) > 1:
        both = " and ".join(f"{w}x{h}" for w, h in sizes) if len(sizes) > 1 else " and ".join(f"{r}fps" for r in rates)
        raise NameAmbiguity(both)
    if sizes:
        out["width"], out["height"] = sizes[0]
    if rates:
        out["fps"] = rates[0]  # the digits as written: parse_rate reads them exactly
    if m := _PIXFMT_RE.search(name.lower()):
        out["pix_fmt"] = m.group(0)
    elif re.search(r"(?<![0-9])10b(it)?(?![a-z])", name, re.I):
        out["pix_fmt"] = "yuv420p10le"
    return out


def parse_size(text: str, *, flag: str = "--demo-size", minimum: int = 64, maximum: int = 3840) -> tuple[int, int]:
    """'192x108' -> (192, 108); even sizes from `minimum` (yuv420p and libvmaf's smallest filter windows) to
    `maximum` (the demo's clips are generated in memory: 4K is plenty, 20000x20000 would exhaust it)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BadInput(f"{flag} {text!r} is not WxH", hint=f"e.g. {flag} 192x108") from None
    if not (minimum <= w <= maximum and minimum <= h <= maximum) or w % 2 or h % 2:
        raise BadInput(f"{flag} {text}: width and height must be even, from {minimum} to {maximum}",
                       hint=f"e.g. {flag} 128x72")
    return w, h


# ---- Y4M headers ---------------------------------------------------------------------------------

def y4m_header(width: int, height: int, pix_fmt: str, fps: Fraction, color_range: str = "") -> bytes:
    """The stream header a .y4m of these frames starts with (progressive, square pixels)."""
    rng = {v: k for k, v in Y4M_COLOR_RANGE.items()}.get(color_range, "")
    return (f"YUV4MPEG2 W{width} H{height} F{fps.numerator}:{fps.denominator} Ip A1:1 C{Y4M_TAG[pix_fmt]}"
            f"{' ' + rng if rng else ''}\n").encode()


def y4m_color_range(header: str) -> str:
    """'pc' / 'tv' / '' from a Y4M stream header's XCOLORRANGE tag."""
    return Y4M_COLOR_RANGE.get(next((t for t in header.split() if t.startswith("XCOLORRANGE=")), ""), "")
