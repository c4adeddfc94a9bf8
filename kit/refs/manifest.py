"""refs.json: what a reference pack holds, validated as untrusted input; raw-frame sha256 per file name.

WHY: a second verdict only confirms the first if both boxes encoded the *same* reference frames. A
pack (`kit.refs.pack`) holds every reference losslessly plus `refs.json`, which records each source's
geometry and the sha256 of its raw frames. This module is the format: reading it never decodes
anything, so `kit.corpus.sources` can key sources by their raw frames cheaply.
"""

from __future__ import annotations

import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

from kit import __version__
from kit.core.errors import BadInput
from kit.core.fsio import read_json
from kit.corpus.geometry import MAX_FPS, RAW_PIX_FMTS, frame_bytes

REFS_JSON = "refs.json"
README = "README.txt"
SCHEMA = "ensemble-kit/refs"
SCHEMA_VERSION = 1

_SHA = re.compile(r"[0-9a-f]{64}")
COLOR_RANGES = ("", "pc", "tv")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@=,-]*")


@dataclass(frozen=True)
class RefEntry:
    """One source in a pack: what the frames are (geometry, raw sha256) and where they are stored."""

    name: str  # Source.src: the corpus' source name
    source_file: str  # the file it was packed from
    packed_file: str  # the lossless file in the pack
    width: int
    height: int
    pix_fmt: str
    fps: float
    fps_rational: str  # exact ("26777/1000", never rounded to 1339/50): the rate the corpus feeds the encoders
    n_frames: int
    raw_sha256: str
    raw_bytes: int
    packed_sha256: str
    packed_bytes: int
    encoder: str
    color_range: str = ""  # "pc" (full), "tv" (limited) or "" (untagged): kept so no step converts ranges
    # The source's timestamps varied; the pack stores its frames, and the corpus (from the original or
    # from the pack) feeds them to the encoders one after another at fps_rational (kit.corpus.grid.encoder_input).
    variable_rate: bool = False

    def raw_file(self, *, y4m: bool = False) -> str:
        """File name `refs unpack` gives these frames: `<name>.y4m`, or `<name>.yuv` + a `<name>.json`
        geometry sidecar (kit.corpus.sources reads it), so the corpus' source name stays `<name>`."""
        return f"{self.name}.y4m" if y4m else f"{self.name}.yuv"

    def sidecar(self) -> dict[str, Any]:
        """The unpacked .yuv's geometry; kit.corpus.sources reads the exact `fps_rational` first."""
        return {"width": self.width, "height": self.height, "pix_fmt": self.pix_fmt, "fps": self.fps,
                "fps_rational": self.fps_rational}

    def known_files(self) -> tuple[str, ...]:
        """Every name under which a reference directory may hold exactly these frames."""
        return tuple(dict.fromkeys((self.raw_file(), self.raw_file(y4m=True), self.packed_file, self.source_file)))


@dataclass(frozen=True)
class RefsManifest:
    codec: str
    sources: tuple[RefEntry, ...]
    kit_version: str = __version__
    ffmpeg_version: str = ""
    env_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "codec": self.codec,
            "kit_version": self.kit_version,
            "ffmpeg_version": self.ffmpeg_version,
            "env_fingerprint": self.env_fingerprint,
            "unpack": "ensemble-kit refs unpack <this pack> --out <dir>   (then: --ref-dir <dir>)",
            "raw_bytes": sum(e.raw_bytes for e in self.sources),
            "packed_bytes": sum(e.packed_bytes for e in self.sources),
            "sources": [asdict(e) for e in sorted(self.sources, key=lambda e: e.name)],
        }

    def by_name(self) -> dict[str, RefEntry]:
        return {e.name: e for e in self.sources}


def _bad_manifest(path: Path, what: str) -> BadInput:
    return BadInput(f"{path} is not a valid refs.json: {what}",
                    hint="the pack is damaged or from an incompatible kit: ask the sender to re-run `ensemble-kit refs pack`")


def check_name(path: Path, value: Any, what: str) -> str:
    """refs.json is untrusted: every name that becomes a path must be a plain file name."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise _bad_manifest(path, f"{what} {value!r} is not a plain file name")
    return value


def _entry(path: Path, raw: Any, index: int) -> RefEntry:
    if not isinstance(raw, dict):
        raise _bad_manifest(path, f"sources[{index}] is not an object")
    kinds = {f.name: f.type for f in fields(RefEntry)}
    optional = {f.name for f in fields(RefEntry) if f.default is not MISSING}
    missing = [k for k in kinds if k not in raw and k not in optional]
    if missing:
        raise _bad_manifest(path, f"sources[{index}] lacks {', '.join(missing)}")
    values: dict[str, Any] = {}
    for key, kind in kinds.items():
        if key not in raw:
            continue
        v = raw[key]
        ok = {"int": isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              "float": isinstance(v, int | float) and not isinstance(v, bool) and v > 0,
              "str": isinstance(v, str), "bool": isinstance(v, bool)}[kind]
        if not ok:
            raise _bad_manifest(path, f"sources[{index}].{key} = {v!r} is not a valid {kind}")
        values[key] = float(v) if kind == "float" else v
    for key in ("name", "source_file", "packed_file"):
        check_name(path, values[key], f"sources[{index}].{key}")
    for key in ("raw_sha256", "packed_sha256"):
        if not _SHA.fullmatch(values[key]):
            raise _bad_manifest(path, f"sources[{index}].{key} is not a sha256")
    if values.get("color_range", "") not in COLOR_RANGES:
        raise _bad_manifest(path, f"sources[{index}].color_range must be one of {', '.join(map(repr, COLOR_RANGES))}")
    if values["pix_fmt"] not in RAW_PIX_FMTS:
        raise _bad_manifest(path, f"sources[{index}].pix_fmt {values['pix_fmt']!r} is unsupported")
    if values["width"] < 1 or values["height"] < 1 or values["n_frames"] < 1:
        raise _bad_manifest(path, f"sources[{index}] has an empty geometry")
    if values["raw_bytes"] != values["n_frames"] * frame_bytes(values["width"], values["height"], values["pix_fmt"]):
        raise _bad_manifest(path, f"sources[{index}].raw_bytes disagrees with its geometry and frame count")
    try:
        if not 0 < Fraction(values["fps_rational"]) <= MAX_FPS:
            raise ValueError(values["fps_rational"])
    except (ValueError, ZeroDivisionError):
        raise _bad_manifest(path, f"sources[{index}].fps_rational {values['fps_rational']!r} is not a fraction") from None
    return RefEntry(**values)


def read_manifest(path: str | os.PathLike[str]) -> RefsManifest:
    """Parse and validate a refs.json (a file or the directory holding one); BadInput names the problem."""
    path = Path(path)
    if path.is_dir():
        path = path / REFS_JSON
    return manifest_from(read_json(path, what="refs.json"), path)


def manifest_from(doc: Any, path: Path) -> RefsManifest:
    """Validate an already-parsed refs.json; `path` names it in messages (e.g. `pack.tar/refs.json`)."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise _bad_manifest(path, f"schema is not {SCHEMA!r}")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise BadInput(f"{path} has refs schema_version {doc.get('schema_version')!r}; this kit reads {SCHEMA_VERSION}",
                       hint="use the ensemble-kit version that made the pack")
    raw_sources = doc.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise _bad_manifest(path, "no sources")
    entries = tuple(_entry(path, raw, i) for i, raw in enumerate(raw_sources))
    for key in ("name", "packed_file"):
        seen = [getattr(e, key) for e in entries]
        if len(set(seen)) != len(seen):
            raise _bad_manifest(path, f"duplicate {key}")
    known = {"schema", "schema_version", "codec", "kit_version", "ffmpeg_version", "env_fingerprint", "unpack",
             "raw_bytes", "packed_bytes", "sources"}
    return RefsManifest(codec=str(doc.get("codec", "")), sources=entries, kit_version=str(doc.get("kit_version", "")),
                        ffmpeg_version=str(doc.get("ffmpeg_version", "")),
                        env_fingerprint=str(doc.get("env_fingerprint", "")),
                        extra={k: v for k, v in doc.items() if k not in known})


def raw_sha256_index(ref_dir: str | os.PathLike[str]) -> dict[str, str]:
    """File name -> raw-frame sha256 for the files a reference directory's refs.json describes.

    Empty when there is no refs.json. Covers every name the same frames may have there (unpacked
    `.yuv`/`.y4m`, the packed `.mkv`, the original file name). It trusts refs.json; `refs verify`
    is what checks the files against it.
    """
    path = Path(ref_dir) / REFS_JSON
    if not path.is_file():
        return {}
    index: dict[str, str] = {}
    for entry in read_manifest(path).sources:
        for name in entry.known_files():
            index.setdefault(name, entry.raw_sha256)
    return index




def entries_by_file(ref_dir: str | os.PathLike[str]) -> dict[str, RefEntry]:
    """File name -> its refs.json entry, for every name the same frames may have in `ref_dir`; {} without refs.json."""
    path = Path(ref_dir) / REFS_JSON
    if not path.is_file():
        return {}
    return {name: e for e in read_manifest(path).sources for name in e.known_files()}


def check_pix_fmt(pix_fmt: str, where: str) -> None:
    if pix_fmt not in RAW_PIX_FMTS:
        raise BadInput(f"{where}: pixel format {pix_fmt!r} is not supported by reference packs",
                       hint=f"convert it to one of: {', '.join(RAW_PIX_FMTS)}")


def readme_text(manifest: RefsManifest) -> str:
    return (f"ensemble-kit reference pack: {len(manifest.sources)} source(s), codec {manifest.codec}, "
            f"{manifest.to_json()['raw_bytes']} raw bytes. "
            "Unpack with: ensemble-kit refs unpack <this pack> --out <dir>   then run with --ref-dir <dir>\n")
