"""The grid: sources x encoders x cqs, one Cell each, with an id that says exactly what decides its rows.

Where a cq becomes an ffmpeg argv: `plan_grid` asks the encoder table (`Encoder.argv`, `hw_setup`) for
each cell's output-side arguments; `kit.corpus.engine.run_cell` puts them between the reference input
and the raw elementary-stream output.

A cell's id hashes everything that decides its rows (content, geometry, encoder argv, ffmpeg and
libvmaf identity, scorer, model) and nothing that changes run to run (timings, thread counts, device
node, box), so a rerun skips finished cells, redoes changed ones, and shards split the same grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kit.core.errors import BadInput
from kit.core.fsio import read_json, write_json
from kit.core.ids import KEY_LEN, object_id
from kit.core.rundir import RunDir
from kit.core.schema import DEFAULT_VMAF_MODEL
from kit.corpus import encoders as enc_table
from kit.corpus.ffmpeg import EncoderProbe, FFmpeg, probe_encoder
from kit.corpus.geometry import check_vmaf_size, chroma_shift
from kit.corpus.sources import Source
from kit.corpus.vmaf_cli import VmafCli, scorer_fingerprint, scorer_identity
from kit.env import fingerprint as env_fingerprint
from kit.env import platform

CELL_SCHEMA_VERSION = 2  # 2: every encoder gets the canonical stream of `encoder_input`; ids without the file kind


@dataclass(frozen=True)
class RunContext:
    """What every row of this run carries besides its measurements."""

    ff: FFmpeg
    platform: str
    box_id: str
    env_fingerprint: str
    model: str = DEFAULT_VMAF_MODEL
    vmaf_cli: VmafCli | None = None  # None: ffmpeg's libvmaf filter scores

    @classmethod
    def detect(cls, ff: FFmpeg, *, model: str = DEFAULT_VMAF_MODEL, vmaf_cli: VmafCli | None = None) -> RunContext:
        env_fingerprint.require_locked_ffmpeg(ff)  # exit 3 on a damaged locked ffmpeg; a warning for any other
        fp = env_fingerprint.fingerprint(ff, vmaf_model=model, scorer=scorer_fingerprint(vmaf_cli, ff.libvmaf_version))
        return cls(ff=ff, platform=platform.detect().tag, box_id=platform.box_id(),
                   env_fingerprint=env_fingerprint.fingerprint_id(fp), model=model, vmaf_cli=vmaf_cli)

    def scorer_identity(self) -> dict[str, Any]:
        return scorer_identity(self.vmaf_cli, self.ff.libvmaf_version)


@dataclass(frozen=True)
class Cell:
    source: Source
    encoder: enc_table.Encoder
    cq: int
    device: str | None  # render node for qsv/vaapi (not part of the id)
    encode_args: tuple[str, ...]  # output-side args: filters + encoder argv
    global_args: tuple[str, ...]  # hw device setup before the inputs
    cell_id: str

    @property
    def label(self) -> str:
        return f"{self.source.src} {self.encoder.name} cq{self.cq}"

    @property
    def stream_format(self) -> str:
        return enc_table.CODEC_STREAM_FORMAT[enc_table.codec_of(self.encoder)]

    @property
    def cost(self) -> float:
        s = self.source
        return s.n_frames * s.width * s.height * self.encoder.cost

    @property
    def timeout(self) -> float:
        """Generous per-tool limit so only a hung tool hits it: 120 s plus 2 s per megapixel-frame (x cost)."""
        s = self.source
        mp_frames = s.n_frames * s.width * s.height / 1e6
        return 120.0 + 2.0 * mp_frames * self.encoder.cost


def cell_key(source: Source, encoder: enc_table.Encoder, cq: int, encode_args: Sequence[str], ctx: RunContext) -> dict[str, Any]:
    """Everything that decides a cell's rows; timings, threads and device nodes deliberately left out."""
    return {"cell_schema": CELL_SCHEMA_VERSION, "src_sha256": source.src_sha256, "geometry": source.geometry,
            "encoder": encoder.name, "cq": cq, "argv": list(encode_args), "ffmpeg": ctx.ff.identity(),
            "scorer": ctx.scorer_identity(), "model": ctx.model}


def make_cell_id(key: dict[str, Any]) -> str:
    return object_id(key, KEY_LEN)


def check_encoders(ff: FFmpeg, names: Sequence[str]) -> dict[str, EncoderProbe]:
    """Unknown names and encoders that cannot encode on this box are bad input naming what does work."""
    encs = [enc_table.get(n) for n in names]  # unknown name -> BadInput
    probes = {e.name: probe_encoder(ff, e.name) for e in encs}
    bad = [p for p in probes.values() if not p.ok]
    if bad:
        working = [n for n in enc_table.ENCODERS if probe_encoder(ff, n).ok]
        why = "; ".join(f"{p.encoder}: {p.reason}" for p in bad)
        raise BadInput(f"--encoders: not available on this box: {why}",
                       hint=f"encoders that work here: {', '.join(working) or 'none'}")
    return probes


# Encoders that always encode 4:2:0 (ffmpeg converts other layouts for them): SVT-AV1 and the hardware families.
FOUR_TWO_ZERO_ONLY = frozenset({"libsvtav1"})


def check_encodable(sources: Sequence[Source], encoder_names: Sequence[str]) -> None:
    """Frames libvmaf cannot score (`check_vmaf_size`) and odd frame sizes that an encoder's chroma
    subsampling cannot take are refused before any encode (libx264 fails every cell of a 175x143 yuv420p
    clip), naming the clip and how to fix it. No silent crop or pad: the frames VMAF compares are always
    the reference's own."""
    for source in sources:
        check_vmaf_size(source.path.name, source.width, source.height)
        for name in encoder_names:
            enc = enc_table.get(name)
            sx, sy = (1, 1) if enc.hw or name in FOUR_TWO_ZERO_ONLY else chroma_shift(source.pix_fmt)
            if source.width % (1 << sx) or source.height % (1 << sy):
                w, h = source.width - source.width % (1 << sx), source.height - source.height % (1 << sy)
                raise BadInput(
                    f"{source.path.name} is {source.width}x{source.height}, but {name} subsamples chroma and needs "
                    f"the width a multiple of {1 << sx} and the height of {1 << sy}; nothing was encoded",
                    hint=f"crop it to {w}x{h} (ffmpeg ... -vf crop={w}:{h}:0:0) or pad it, and use that file")


def check_cqs(encoder_names: Sequence[str], cqs: Sequence[int]) -> None:
    for name in encoder_names:
        for cq in cqs:
            enc_table.get(name).check_cq(cq)


# What is taken off every reference before its frames reach an encoder: the container's timestamps, pixel
# aspect and colour tags. They change the bitstream (x264 writes them into its headers and paces rate
# control by the timestamps) but never the pixels libvmaf compares, and they differ between an .mp4, the
# .y4m of its frames and the unpacked .yuv of a reference pack.
CANONICAL_TAGS = ("setsar=1,setparams=field_mode=prog:range=unknown:color_primaries=unknown:color_trc=unknown"
                  ":colorspace=unknown:chroma_location=unspecified")


def encoder_input(source: Source) -> str:
    """The filter that makes what an encoder is fed depend on the frames and the exact rate only: square
    pixels, no colour tags, frame n at n / fps_rational (a variable-rate source is re-timed to its rate).
    So the corpus of an unpacked reference pack equals the corpus of the original clips."""
    rate = source.rate
    return f"{CANONICAL_TAGS},settb={rate.denominator}/{rate.numerator},setpts=N"


def plan_grid(sources: Sequence[Source], encoder_names: Sequence[str], cqs: Sequence[int], ctx: RunContext,
              probes: dict[str, EncoderProbe] | None = None) -> list[Cell]:
    """The full grid in its canonical order (src, encoder, cq); each cell's cq turned into its ffmpeg argv."""
    check_cqs(encoder_names, cqs)
    check_encodable(sources, encoder_names)
    cells = []
    for source in sorted(sources, key=lambda s: (s.src, s.src_sha256)):
        for name in encoder_names:
            enc = enc_table.get(name)
            device = probes[name].device if probes and name in probes else None
            pre, vf = enc_table.hw_setup(enc, device, ten_bit=source.bit_depth > 8)
            for cq in sorted(set(cqs)):
                encode_args = ("-vf", ",".join(f for f in (encoder_input(source), vf) if f), *enc.argv(cq))
                # the id sees the hw setup without the node path: moving to another node is the same cell
                id_args = [a.replace(device, "<node>") if device else a for a in (*pre, *encode_args)]
                cid = make_cell_id(cell_key(source, enc, cq, id_args, ctx))
                cells.append(Cell(source, enc, cq, device, tuple(encode_args), tuple(pre), cid))
    return cells


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' with 0 <= K < N (0-based, like Slurm's 0-based arrays and Kubernetes' JOB_COMPLETION_INDEX)."""
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise BadInput(f"--shard {text!r} is not K/N", hint="e.g. --shard 0/4 ... --shard 3/4") from None
    if n < 1:
        raise BadInput(f"--shard {text}: N must be >= 1", hint="--shard 0/1 runs everything as one shard; "
                       "--shard 0/4 ... 3/4 splits it in four")
    if not 0 <= k < n:
        raise BadInput(f"--shard {text}: need 0 <= K < N", hint=f"use --shard 0/{n} ... {n - 1}/{n}")
    return k, n


def shard_cells(cells: Sequence[Cell], k: int, n: int) -> list[Cell]:
    """Cell i of the canonical grid order goes to shard i mod N: deterministic and mixes sources and cqs."""
    return [c for i, c in enumerate(cells) if i % n == k]


def grid_id(grid: Sequence[Cell]) -> str:
    """One id for a whole grid (its cell ids in canonical order): shards of one grid share it."""
    return object_id([c.cell_id for c in grid])


def write_grid(run_dir: RunDir, grid: Sequence[Cell], ctx: RunContext, encoder_names: Sequence[str],
               cqs: Sequence[int]) -> None:
    """corpus/grid.json: the current grid (which cells corpus.parquet must hold) and what made it."""
    write_json(run_dir.grid_json, {
        "grid_id": grid_id(grid),
        "encoders": list(encoder_names), "cqs": sorted(set(cqs)), "model": ctx.model,
        "ffmpeg": {**ctx.ff.identity(), "path": str(ctx.ff.path), "origin": ctx.ff.origin},
        "scorer": ctx.scorer_identity(), "platform": ctx.platform, "box_id": ctx.box_id,
        "env_fingerprint": ctx.env_fingerprint,
        "sources": sorted({(c.source.src, c.source.src_sha256): c.source.geometry | {
            "src": c.source.src, "src_sha256": c.source.src_sha256, "file": c.source.path.name,
            "variable_rate": c.source.variable_rate, "encoder_input": encoder_input(c.source)}
            for c in grid}.values(), key=lambda d: str(d["src"])),
        "cells": [{"cell_id": c.cell_id, "src": c.source.src, "encoder": c.encoder.name, "cq": c.cq,
                   "n_frames": c.source.n_frames} for c in grid],
    })


@dataclass(frozen=True)
class GridCell:
    """A cell as grid.json lists it: enough to check its file and name it, without ffmpeg or the clips."""

    index: int  # position in the canonical grid order (which shard owns it: index mod N)
    cell_id: str
    src: str
    encoder: str
    cq: int
    n_frames: int

    @property
    def label(self) -> str:
        return f"{self.src} {self.encoder} cq{self.cq}"


def read_grid(run_dir: RunDir) -> tuple[str, list[GridCell]]:
    """(grid id, cells) of the run directory's current grid; BadInput naming grid.json when absent or damaged."""
    path = run_dir.grid_json
    if not path.is_file():
        raise BadInput(f"{path} does not exist: no corpus run has planned a grid in {run_dir.root}",
                       hint="run the corpus (or its shards) into this --out-dir first")
    doc = read_json(path, what="grid.json")
    try:
        frames_by_src = {str(s["src"]): int(s["n_frames"]) for s in doc.get("sources", [])}
        cells = [GridCell(i, str(c["cell_id"]), str(c["src"]), str(c["encoder"]), int(c["cq"]),
                          int(c.get("n_frames", frames_by_src.get(str(c["src"]), -1))))
                 for i, c in enumerate(doc["cells"])]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise BadInput(f"{path} is damaged (not the grid a corpus run writes)",
                       hint="rerun one corpus shard (or the whole corpus) to write it again: finished cells are reused") from None
    return str(doc.get("grid_id") or object_id([c.cell_id for c in cells])), cells
