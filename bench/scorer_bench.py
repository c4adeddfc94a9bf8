#!/usr/bin/env python3
"""The two scorers on the same cells, side by side: ffmpeg's libvmaf filter vs a built vmaf CLI.

Every cell (demo clip x encoder x cq) is encoded once; then each encode is scored by the filter and by
each vmaf CLI (fed through FIFOs, as `--scorer vmaf` does), one after the other, alternating so that a
change of load on a shared box hits both alike. Prints, per scorer: wall seconds, CPU seconds (user+sys
of every process it ran: the CLI's two decoders included), CPU utilisation (CPU / wall), each as a ratio
against the filter, and the per-feature max |delta| against the filter over every frame.

    python bench/scorer_bench.py                                   # the staged vmaf (or $ENSEMBLE_KIT_VMAF)
    python bench/scorer_bench.py --vmaf binaries/linux-cpu-x86_64/bin/vmaf --vmaf /opt/nflx/bin/vmaf
    python bench/scorer_bench.py --encoders libx264 --cqs 30 --threads 2 --size 1280x720 --frames 60
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit.core import proc  # noqa: E402
from kit.core.schema import LIBVMAF_KEYS  # noqa: E402
from kit.corpus import demo, engine, ffmpeg, grid, scoring, sources, vmaf_cli  # noqa: E402

FILTER = "ffmpeg-filter"


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def encode_cells(ff: ffmpeg.FFmpeg, cells: list[grid.Cell], wd: Path) -> dict[str, list[str]]:
    """Each cell's encode, once: cell id -> the distorted input args."""
    inputs = {}
    for cell in cells:
        stream = wd / f"{cell.cell_id}.{cell.stream_format}"
        proc.run(engine.encode_argv(cell, ff, stream), stage="encode", stdout=False)
        inputs[cell.cell_id] = ["-f", cell.stream_format, "-i", str(stream)]
    return inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vmaf", action="append", type=Path, help="a vmaf CLI (repeatable; default: the staged one)")
    ap.add_argument("--encoders", default="libx264")
    ap.add_argument("--cqs", default=",".join(map(str, demo.DEMO_CQS)))
    ap.add_argument("--threads", type=int, default=1, help="libvmaf threads, the same for every scorer")
    ap.add_argument("--size", default=None, help="demo clips at this WxH (default: the demo's)")
    ap.add_argument("--frames", type=int, default=demo.DEMO_FRAMES)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ff = ffmpeg.find_ffmpeg()
    clis = [vmaf_cli.load(p) for p in args.vmaf] if args.vmaf else [vmaf_cli.choose_scorer("vmaf")]
    scorers: dict[str, vmaf_cli.VmafCli | None] = {FILTER: None}
    scorers.update({f"vmaf {c.version} ({c.backend}) {c.path}": c for c in clis if c is not None})
    size = tuple(int(v) for v in args.size.split("x")) if args.size else demo.DEMO_SIZE
    refs = sources.discover(demo.demo_sources(ff, size, args.frames), ff=ff)
    ctx = grid.RunContext.detect(ff)
    cells = grid.plan_grid(refs, args.encoders.split(","), [int(c) for c in args.cqs.split(",")], ctx)
    wall = dict.fromkeys(scorers, 0.0)
    cpu = dict.fromkeys(scorers, 0.0)
    delta = {name: dict.fromkeys(LIBVMAF_KEYS, 0.0) for name in scorers}
    frames = 0
    with tempfile.TemporaryDirectory(prefix="scorer-bench-") as tmp:
        inputs = encode_cells(ff, cells, Path(tmp))
        for i, cell in enumerate(cells):
            order = list(scorers) if i % 2 == 0 else list(reversed(scorers))
            results = {}
            for name in order:
                t0, c0 = time.perf_counter(), children_cpu()
                results[name] = scoring.score(ff, cell.source, inputs[cell.cell_id], n_threads=args.threads,
                                              vmaf_cli=scorers[name])
                wall[name] += time.perf_counter() - t0
                cpu[name] += children_cpu() - c0
            frames += results[FILTER].n_frames
            for name, result in results.items():
                for key in LIBVMAF_KEYS:
                    worst = max(abs(a[key] - b[key]) for a, b in zip(result.frames, results[FILTER].frames, strict=True))
                    delta[name][key] = max(delta[name][key], worst)
    report = {
        "cells": len(cells), "frames": frames, "threads": args.threads, "encoders": args.encoders,
        "size": f"{size[0]}x{size[1]}", "clips": len(refs),
        "scorers": {name: {"wall_s": round(wall[name], 3), "cpu_s": round(cpu[name], 3),
                           "cpu_utilisation": round(cpu[name] / wall[name], 3),
                           "wall_ratio": round(wall[name] / wall[FILTER], 3), "cpu_ratio": round(cpu[name] / cpu[FILTER], 3),
                           "max_abs_delta": delta[name]} for name in scorers},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{len(cells)} cells, {frames} frames ({len(refs)} demo clips {report['size']}, {args.encoders}, "
          f"cqs {args.cqs}), libvmaf threads {args.threads}; ratios against ffmpeg's libvmaf filter")
    for name, r in report["scorers"].items():
        deltas = ", ".join(f"{k} {v:.1e}" for k, v in r["max_abs_delta"].items())
        print(f"{name}\n  wall {r['wall_s']:7.2f} s (x{r['wall_ratio']:.2f})  CPU {r['cpu_s']:7.2f} s "
              f"(x{r['cpu_ratio']:.2f})  CPU utilisation {r['cpu_utilisation']:.2f}"
              + (f"\n  max |delta| vs filter: {deltas}" if name != FILTER else ""))


if __name__ == "__main__":
    main()
