"""Peak memory of `verify` and `compare` on a big honest bundle, against the plain (slurping) way.

Builds a finished run whose corpus.parquet is --size-mb of incompressible rows (random features and
VMAF, canonical order), with every other file written by the kit's own code (write_loso, decide,
write_decision), bundles it (`make_bundle`), then measures the peak resident memory of each in a fresh
process (VmHWM from /proc/self/status; ru_maxrss elsewhere):

  idle     python with the modules verify and compare load, doing nothing (the constant floor)
  verify   `ensemble-kit verify BUNDLE` (streamed extraction and hashing, every check re-derived)
  compare  `ensemble-kit compare BUNDLE COPY` (two bundles opened, corpus facts streamed)
  plain    the same corpus checks the plain way: the bundle read into memory, the corpus loaded
           with the kit's loader and hashed in memory (`corpus_sha256(load_corpus(...))`), the
           per-source encoder table with pandas, as compare did before streaming

and prints each peak, and verify/compare against plain. Wall times are printed for information only.

    python bench/bundle_memory.py                  # a 1 GiB corpus (needs ~6 GiB of disk, ~4 GiB RAM for plain)
    python bench/bundle_memory.py --size-mb 64     # quick
    python bench/bundle_memory.py --work /big/disk --keep
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kit.core.fsio import sha256_bytes, write_json
from kit.core.rundir import RunDir
from kit.core.schema import CORPUS_COLUMNS, FEATURES
from kit.corpus.rows import ROW_RULES
from kit.corpus.table import streamed_corpus_sha256
from kit.results import bundle
from kit.results.gate import decide, write_decision
from kit.results.thresholds import Thresholds
from kit.train.config import TrainConfig
from kit.train.loso_files import PREDICTION_COLUMNS, LosoResult, write_loso

SOURCES, ENCODERS, CQS = 5, ("libx264",), tuple(range(20, 40, 2))
RANDOM_FLOATS = ("vmaf", *FEATURES, "bitrate_kbps", "enc_time_ms", "score_time_ms", "fps")
CHUNK_ROWS = 1 << 20


def _chunk(src: str, sha: str, enc: str, cq: int, start: int, n: int, rng: np.random.Generator) -> pa.Table:
    """n rows of one cell, frames start..start+n, every float random (nothing for parquet to squeeze)."""
    cols: dict[str, pa.Array] = {}
    for col, kind in CORPUS_COLUMNS.items():
        if col in RANDOM_FLOATS:  # inside the row rule's range (kit.corpus.rows), as verify requires
            cols[col] = pa.array(rng.random(n) * min(100.0, ROW_RULES[col].hi))
        elif col == "frame_index":
            cols[col] = pa.array(np.arange(start, start + n, dtype=np.int64))
        elif kind == "int64":
            value = {"cq": cq, "width": 1920, "height": 1080}.get(col, 0)
            cols[col] = pa.array(np.full(n, value, dtype=np.int64))
        else:
            value = {"src": src, "src_sha256": sha, "encoder": enc, "preset": "medium", "pix_fmt": "yuv420p",
                     "quality_arg": f"-crf {cq}", "cell_id": f"{sha[:8]}{enc}{cq}"}.get(col, "x")
            cols[col] = pa.array(np.full(n, value, dtype=object), type=pa.large_string())  # as pandas writes it
    return pa.table(cols)


def build_run(root: Path, size_mb: int) -> Path:
    """A finished, self-consistent run with a ~size_mb corpus.parquet (rows of random floats)."""
    rd = RunDir(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_row = 8 * len(RANDOM_FLOATS) + 8  # bytes of random floats and the frame index, roughly what parquet keeps
    frames = max(4, size_mb * 2**20 // per_row // (SOURCES * len(ENCODERS) * len(CQS)))
    sources = sorted((sha256_bytes(f"bench-src{s}".encode()), f"bench_src{s}") for s in range(SOURCES))
    writer = None
    for sha, src in sources:
        for enc in ENCODERS:
            for cq in CQS:
                for start in range(0, frames, CHUNK_ROWS):
                    table = _chunk(src, sha, enc, cq, start, min(CHUNK_ROWS, frames - start), rng)
                    if writer is None:
                        writer = pq.ParquetWriter(rd.corpus, table.schema, compression="snappy")
                    writer.write_table(table)
    assert writer is not None
    writer.close()
    rows_per_source = frames * len(ENCODERS) * len(CQS)
    corpus = {"sha256": streamed_corpus_sha256(rd.corpus), "n_rows": rows_per_source * SOURCES,
              "n_sources": SOURCES, "n_encoders": len(ENCODERS), "encoders": list(ENCODERS),
              "sources": [{"src": src, "src_sha256": sha, "n_rows": rows_per_source} for sha, src in sources]}
    assert corpus["sha256"], "the bench corpus must be streamable (canonical order)"
    config, seeds = TrainConfig(), (0, 1, 2, 3, 4)
    folds = pd.DataFrame([{"seed": s, "fold_src": src, "fold_src_sha256": sha, "plcc": 0.96 + 0.001 * i, "srocc": 0.95,
                           "krocc": 0.9, "rmse": 3.0, "n_frames": rows_per_source, "n_encodes": len(CQS),
                           "n_train": rows_per_source * (SOURCES - 1)}
                          for s in seeds for i, (sha, src) in enumerate(sources)])
    loso = LosoResult(seeds=seeds, config=config, folds=folds,
                      predictions=pd.DataFrame({c: pd.Series(dtype="float64") for c in PREDICTION_COLUMNS}),
                      corpus=corpus, fingerprint={"bench": True}, fingerprint_id="bench", wall_time_s=0.0)
    write_loso(loso, rd)
    decided = decide(loso, Thresholds())
    write_decision(rd, decided, loso, now=datetime(2026, 11, 30, tzinfo=UTC))
    write_json(rd.run_json, {"started_at_utc": "2026-11-30T00:00:00Z", "platform": "bench", "box_id": "bench",
                             "fingerprint": {"bench": True},
                             "options": {"seeds": list(seeds), "train": config.to_dict(), "gate": vars(Thresholds())}})
    return root


MEASURE = r"""
import json, resource, sys, time
what, args = sys.argv[1], sys.argv[2:]
import kit.results.bundle_checks, kit.results.compare  # every module verify and compare load
started = time.perf_counter()
if what == "verify":
    from kit.results import bundle
    bundle.verify(__import__("pathlib").Path(args[0]))
elif what == "compare":
    from kit.results import compare
    compare.compare(__import__("pathlib").Path(args[0]), __import__("pathlib").Path(args[1]))
elif what == "plain":
    import tarfile, tempfile, hashlib
    from pathlib import Path
    import pandas as pd
    from kit.corpus.table import corpus_sha256
    from kit.train.data import load_corpus
    data = Path(args[0]).read_bytes()                       # the bundle slurped
    hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args[0]) as tf:
            tf.extractall(tmp, filter="data")
        (corpus,) = Path(tmp).rglob("corpus.parquet")
        corpus_sha256(load_corpus(corpus))                   # the corpus hashed in memory
        df = pd.read_parquet(corpus, columns=["src", "src_sha256", "encoder"])
        {sha: sorted(g["encoder"].unique()) for sha, g in df.groupby("src_sha256")}   # compare's old source table
def peak_mib():
    # VmHWM: this process image's own peak (ru_maxrss keeps the forking parent's peak across exec on Linux)
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_rss_mib": peak_mib(), "seconds": time.perf_counter() - started}))
"""


def measure(what: str, *args: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", MEASURE, what, *map(str, args)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the corpus in the bundle (MiB)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the run and bundles (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="ekit-bench-bundle-"))
    try:
        started = time.perf_counter()
        run = build_run(work / "run", args.size_mb)
        made = bundle.make_bundle(run, work / "bundle.tar.gz")
        copy = work / "copy.tar.gz"
        shutil.copy(made.path, copy)
        built = time.perf_counter() - started
        corpus_mib = RunDir(run).corpus.stat().st_size / 2**20
        results = {"corpus_mib": round(corpus_mib, 1), "bundle_mib": round(made.path.stat().st_size / 2**20, 1),
                   "build_s": round(built, 1)}
        for what, argv in (("idle", ()), ("verify", (made.path,)), ("compare", (made.path, copy)),
                           ("plain", (made.path,))):
            results[what] = {k: round(v, 1) for k, v in measure(what, *argv).items()}
        for what in ("verify", "compare"):
            results[f"{what}_vs_plain"] = round(results[what]["peak_rss_mib"] / results["plain"]["peak_rss_mib"], 3)
            results[f"{what}_above_idle_mib"] = round(results[what]["peak_rss_mib"] - results["idle"]["peak_rss_mib"], 1)
        if args.json:
            print(json.dumps(results, indent=2))
            return
        print(f"bundle: {results['bundle_mib']} MiB (corpus.parquet {results['corpus_mib']} MiB), built in "
              f"{results['build_s']} s")
        for what in ("idle", "verify", "compare", "plain"):
            r = results[what]
            print(f"  {what:8} peak RSS {r['peak_rss_mib']:8.1f} MiB   ({r['seconds']:.1f} s)")
        for what in ("verify", "compare"):
            print(f"  {what} / plain = {results[f'{what}_vs_plain']:.3f}  ({results[f'{what}_above_idle_mib']} MiB above "
                  "the idle interpreter)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
