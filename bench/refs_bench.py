"""Reference-pack throughput: MB/s of raw frames for pack and unpack, packed/raw size ratio, and the
speedup of the parallel path (--jobs = all cores) over the plain sequential one (--jobs 1), measured on
the same clips, on the same machine, in the same run.

    python bench/refs_bench.py                 # demo clips + ../shared/media clips (skipped if absent)
    python bench/refs_bench.py --frames 20 --size 128x72 --repeat 1   # quick smoke run
    python bench/refs_bench.py --codec x265-lossless --json

Pack times include the round-trip check every member gets; unpack times include the sha256 check.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kit.corpus.demo import make_demo_sources
from kit.corpus.ffmpeg import find_ffmpeg
from kit.refs import frames, pack, unpack

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def _timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_set(label: str, ref_dir: Path, work: Path, *, codec: str, jobs: int, repeat: int, ff) -> dict:
    def do_pack(j: int) -> pack.PackResult:
        out = work / f"pack-j{j}"
        shutil.rmtree(out, ignore_errors=True)  # fresh each time: no resume shortcut
        return pack.pack(ref_dir, out, codec=codec, jobs=j, ff=ff)

    def do_unpack(j: int) -> None:
        out = work / f"unpack-j{j}"
        shutil.rmtree(out, ignore_errors=True)
        unpack.unpack(work / f"pack-j{jobs}", out, jobs=j, ff=ff)

    first = do_pack(jobs)  # warm caches (source probes), and the pack the unpack runs read
    raw_mb = first.raw_bytes / 1e6
    pack_par = _timed(lambda: do_pack(jobs), repeat)
    pack_seq = _timed(lambda: do_pack(1), repeat)
    do_pack(jobs)
    unpack_par = _timed(lambda: do_unpack(jobs), repeat)
    unpack_seq = _timed(lambda: do_unpack(1), repeat)
    return {
        "set": label, "codec": codec, "sources": len(first.manifest.sources), "jobs": jobs,
        "raw_mb": round(raw_mb, 2), "packed_mb": round(first.packed_bytes / 1e6, 2),
        "size_ratio": round(first.packed_bytes / first.raw_bytes, 4),
        "pack_mb_s": round(raw_mb / pack_par, 1), "pack_seq_mb_s": round(raw_mb / pack_seq, 1),
        "pack_speedup": round(pack_seq / pack_par, 2),
        "unpack_mb_s": round(raw_mb / unpack_par, 1), "unpack_seq_mb_s": round(raw_mb / unpack_seq, 1),
        "unpack_speedup": round(unpack_seq / unpack_par, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", default="ffv1", choices=sorted(pack.CODECS))
    ap.add_argument("--jobs", type=int, default=frames.default_jobs(), help="parallel jobs (default: all cores)")
    ap.add_argument("--frames", type=int, default=50, help="frames per demo clip")
    ap.add_argument("--size", default="640x360", help="demo clip size WxH")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median)")
    ap.add_argument("--media", type=Path, default=MEDIA, help="folder of real clips (skipped if absent)")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    args = ap.parse_args()

    ff = find_ffmpeg(require_libvmaf=False)
    width, height = (int(v) for v in args.size.split("x"))
    results = []
    with tempfile.TemporaryDirectory(prefix="refs-bench-") as tmp:
        tmp_path = Path(tmp)
        demo = make_demo_sources(tmp_path / "demo-src", ff, width=width, height=height, frames=args.frames)
        results.append(bench_set(f"demo {width}x{height}x{args.frames}", demo, tmp_path / "demo-work",
                                 codec=args.codec, jobs=args.jobs, repeat=args.repeat, ff=ff))
        media = [p for p in sorted(args.media.glob("*")) if p.suffix.lower() in (".y4m", ".mp4", ".mkv", ".yuv")] \
            if args.media.is_dir() else []
        if media:
            media_dir = tmp_path / "media-src"
            media_dir.mkdir()
            for p in media:
                (media_dir / p.name).symlink_to(p)
            results.append(bench_set(f"shared media ({len(media)} clips)", media_dir, tmp_path / "media-work",
                                     codec=args.codec, jobs=args.jobs, repeat=args.repeat, ff=ff))
        else:
            print(f"skipping real clips: {args.media} is absent or holds no clips", file=sys.stderr)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"codec {args.codec}, jobs {args.jobs} vs 1, median of {args.repeat}; MB = 1e6 bytes of raw frames")
    header = f"{'set':32} {'raw MB':>8} {'packed/raw':>10} {'pack MB/s':>10} {'x seq':>6} {'unpack MB/s':>12} {'x seq':>6}"
    print(header)
    for r in results:
        print(f"{r['set']:32} {r['raw_mb']:8.1f} {r['size_ratio']:10.3f} {r['pack_mb_s']:10.1f} {r['pack_speedup']:6.2f} "
              f"{r['unpack_mb_s']:12.1f} {r['unpack_speedup']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
