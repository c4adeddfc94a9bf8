#!/usr/bin/env python3
"""Corpus engine vs the plain sequential way, on the same cells, same machine, same run.

plain: per cell, one at a time: encode -> decode to a .yuv file -> libvmaf on two raw files, 1 thread
ours:  `kit.corpus.engine.run_corpus` (cells in parallel, encode decoded straight into libvmaf)
floor: CPU seconds of encode-only plus score-only runs of the same cells, divided by cores

Prints the speed-up (plain wall / ours wall), our CPU utilisation ((user+sys) / (wall x cores)) and our
wall time over the floor. Goal: utilisation >= 0.9 and wall <= 1.1 x floor.

    python bench/corpus_bench.py                 # 4 clips 640x360 x 60 frames, libx264 medium, 4 cqs
    python bench/corpus_bench.py --quick         # a smoke-sized run
    python bench/corpus_bench.py --memory        # peak RSS of one cell at 60 vs 600 frames
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit.core.rundir import RunDir  # noqa: E402
from kit.corpus import engine, ffmpeg, grid, scoring, sources  # noqa: E402
from kit.env.platform import cpu_count  # noqa: E402

CLIPS = {
    "testsrc2": "testsrc2=s={s}:r=25",
    "mandelbrot": "mandelbrot=s={s}:r=25",
    "life": "life=s={s}:r=25:seed=7:ratio=0.25:mold=6",
    "zoneplate": "zoneplate=s={s}:r=25:ku=64:kv=64:kt2=4:kx2=128:ky2=128",
}


def cpu_seconds() -> float:
    """user+sys of this process and all waited-for children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def make_refs(ff: ffmpeg.FFmpeg, d: Path, size: str, frames: int, n: int) -> list[sources.Source]:
    for name, graph in list(CLIPS.items())[:n]:
        subprocess.run([str(ff.path), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", graph.format(s=size),
                        "-frames:v", str(frames), "-pix_fmt", "yuv420p", "-f", "yuv4mpegpipe", str(d / f"{name}.y4m")],
                       check=True)
    return sources.discover(d, ff=ff)


def plain_cell(ff: ffmpeg.FFmpeg, cell: grid.Cell, wd: Path) -> tuple[float, float, float]:
    """The old kit's way; -> (wall s, encode CPU s, score CPU s)."""
    s = cell.source
    t0, c0 = time.perf_counter(), cpu_seconds()
    enc = wd / f"enc.{cell.stream_format}"
    subprocess.run([str(ff.path), "-nostdin", "-v", "error", "-y", *s.input_args(), "-map", "0:v:0",
                    *cell.encode_args, "-f", cell.stream_format, str(enc)], check=True)
    c1 = cpu_seconds()
    ref_yuv, dis_yuv = wd / "ref.yuv", wd / "dis.yuv"
    raw = ["-f", "rawvideo", "-pix_fmt", s.pix_fmt, "-s", f"{s.width}x{s.height}"]
    subprocess.run([str(ff.path), "-nostdin", "-v", "error", "-y", "-f", cell.stream_format, "-i", str(enc),
                    "-pix_fmt", s.pix_fmt, "-f", "rawvideo", str(dis_yuv)], check=True)
    subprocess.run([str(ff.path), "-nostdin", "-v", "error", "-y", *s.input_args(), "-pix_fmt", s.pix_fmt,
                    "-f", "rawvideo", str(ref_yuv)], check=True)
    subprocess.run([str(ff.path), "-nostdin", "-v", "error", *raw, "-i", str(dis_yuv), *raw, "-i", str(ref_yuv),
                    "-lavfi", "[0:v][1:v]libvmaf=n_threads=1:log_fmt=json:log_path=plain.json", "-f", "null", "-"],
                   check=True, cwd=wd)
    for p in (enc, ref_yuv, dis_yuv):
        p.unlink()
    return time.perf_counter() - t0, c1 - c0, cpu_seconds() - c1


def floor_cpu(ff: ffmpeg.FFmpeg, cells: list[grid.Cell], wd: Path) -> float:
    """CPU seconds of encode-only plus score-only (our scorer, one thread) runs of the same cells."""
    total = 0.0
    for cell in cells:
        s = cell.source
        enc = wd / f"floor.{cell.stream_format}"
        c0 = cpu_seconds()
        subprocess.run([str(ff.path), "-nostdin", "-v", "error", "-y", *s.input_args(), "-map", "0:v:0",
                        *cell.encode_args, "-f", cell.stream_format, str(enc)], check=True)
        scoring.score(ff, s, ["-f", cell.stream_format, "-i", str(enc)], n_threads=1, workdir=wd)
        total += cpu_seconds() - c0
        enc.unlink()
    return total


def one_cell_peak_rss(frames: int, size: str) -> dict[str, float]:
    """Run one full cell on a clip of `frames` frames in a fresh process; -> peak RSS (MiB) of it and its tools."""
    code = (
        "import json, resource, sys, tempfile; from pathlib import Path; sys.path.insert(0, sys.argv[3]);"
        "import corpus_bench as b; from kit.corpus import engine, ffmpeg; from kit.core.rundir import RunDir;"
        "ff = ffmpeg.find_ffmpeg(); d = Path(tempfile.mkdtemp()); (d / 'refs').mkdir();"
        "refs = b.make_refs(ff, d / 'refs', sys.argv[2], int(sys.argv[1]), 1);"
        "engine.run_corpus(RunDir(d / 'run'), refs, ['libx264'], [30], ff=ff, jobs=1);"
        "print(json.dumps({'python_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
        " 'tools_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(frames), size, str(Path(__file__).parent)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--clips", type=int, default=4, choices=range(1, len(CLIPS) + 1))
    ap.add_argument("--encoders", default="libx264")
    ap.add_argument("--cqs", default="19,25,31,37")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="160x90, 12 frames, 2 clips, 2 cqs")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--memory", action="store_true",
                    help="only: peak RSS of one cell at 1x and 10x the frames (must not grow with clip length)")
    args = ap.parse_args()
    if args.memory:
        short, long = one_cell_peak_rss(args.frames, args.size), one_cell_peak_rss(10 * args.frames, args.size)
        print(json.dumps({"frames": [args.frames, 10 * args.frames], "short": short, "long": long,
                          "tools_growth": round(long["tools_mib"] / short["tools_mib"], 3),
                          "python_growth": round(long["python_mib"] / short["python_mib"], 3)}, indent=2))
        return
    if args.quick:
        args.size, args.frames, args.clips, args.cqs = "160x90", 12, 2, "25,37"
    ff = ffmpeg.find_ffmpeg()
    cores = cpu_count()
    encoders = args.encoders.split(",")
    cqs = [int(c) for c in args.cqs.split(",")]
    with tempfile.TemporaryDirectory(prefix="corpus-bench-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "refs").mkdir()
        refs = make_refs(ff, tmp_path / "refs", args.size, args.frames, args.clips)
        ctx = grid.RunContext.detect(ff)
        cells = grid.plan_grid(refs, encoders, cqs, ctx)

        t0, c0 = time.perf_counter(), cpu_seconds()
        summary = engine.run_corpus(RunDir(tmp_path / "ours"), refs, encoders, cqs, ff=ff, jobs=args.jobs, ctx=ctx)
        ours_wall, ours_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        assert summary.ok, summary.failed

        (tmp_path / "plain").mkdir()
        plain = [plain_cell(ff, c, tmp_path / "plain") for c in cells]
        plain_wall = sum(p[0] for p in plain)

        (tmp_path / "floor").mkdir()
        floor = floor_cpu(ff, cells, tmp_path / "floor") / cores

    result = {
        "cells": len(cells), "size": args.size, "frames": args.frames, "encoders": encoders, "cores": cores,
        "ours_wall_s": round(ours_wall, 2), "plain_wall_s": round(plain_wall, 2),
        "speedup_vs_plain": round(plain_wall / ours_wall, 3),
        "cpu_utilisation": round(ours_cpu / (ours_wall * cores), 3),
        "floor_s": round(floor, 2), "wall_over_floor": round(ours_wall / floor, 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['cells']} cells ({args.size} x {args.frames} frames, {','.join(encoders)}) on {cores} cores")
        print(f"plain sequential: {plain_wall:8.2f} s")
        print(f"ensemble-kit:     {ours_wall:8.2f} s   speed-up x{result['speedup_vs_plain']:.2f}")
        print(f"CPU utilisation:  {result['cpu_utilisation']:.2f}   (goal >= 0.9)")
        print(f"wall / floor:     {result['wall_over_floor']:.2f}   (floor {floor:.2f} s; goal <= 1.1)")


if __name__ == "__main__":
    main()
