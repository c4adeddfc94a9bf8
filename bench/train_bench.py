"""Training benchmark: LOSO seeds x folds the plain ways vs. ensemble-kit's batched trainer.

Runs, on the same corpus (>= 5,000 rows from 9 sources; synthetic by default, or --corpus PATH),
the same folds, seeds and epochs:
  (a) the plain per-model loop as the old kit ran it: DataLoader(shuffle=True), nn.Module, autograd,
      torch.optim.Adam, one model after another, torch's default thread count;
  (b) the best plain loop: kit.train.plain.train_one (tensor indexing, no DataLoader), one torch
      thread per process, one process per core;
  (c) ours: kit.train.batched.train_models, every model in one batched computation.
and prints both speed ratios and the largest per-seed mean-PLCC difference. (b) draws from the same
per-model generators as (c), so their PLCCs agree to float rounding; (a) uses torch's generators
(as the old kit did), so its difference is seed noise.

Examples:
  python bench/train_bench.py                 # 20 epochs (a tenth of the default 200), all three
  python bench/train_bench.py --epochs 200    # the real thing (plain loops take a long time)
  python bench/train_bench.py --epochs 2 --frames 48   # smoke run
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kit.train.batched import Job, predict, train_models
from kit.train.config import TrainConfig
from kit.train.data import check_trainable, corpus_codec, load_corpus, normalise
from kit.train.loso import LOSO_TAG, prepare_folds, source_key
from kit.train.metrics import agreement
from kit.train.model import Regressor
from kit.train.plain import train_one
from kit.train.synthetic import synthetic_corpus

# ---- (a) the old kit's loop ---------------------------------------------------------------------


def old_kit_model(x: np.ndarray, y: np.ndarray, config: TrainConfig, seed: int) -> Regressor:
    torch.manual_seed(seed)  # the old kit re-seeded identically at every fold
    model = Regressor(config, n_inputs=x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=config.batch_size,
                        shuffle=True)
    model.train()
    for _ in range(config.epochs):
        for xb, yb in loader:
            loss = nn.functional.mse_loss(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def run_a(blocks, tests, jobs, config):
    preds = []
    for job in jobs:
        model = old_kit_model(*blocks[job.block], config, job.key[0])
        with torch.no_grad():
            preds.append(model(torch.from_numpy(tests[job.block][1])).numpy())
    return preds


# ---- (b) best plain loop: one single-threaded process per core ------------------------------------

_SHARED: dict = {}


def _init_worker(blocks, tests, config):
    torch.set_num_threads(1)
    _SHARED.update(blocks=blocks, tests=tests, config=config)


def _plain_job(job: Job) -> np.ndarray:
    weights = train_one(*_SHARED["blocks"][job.block], _SHARED["config"], job.key)
    model = weights.to_module(_SHARED["config"])
    with torch.no_grad():
        return model(torch.from_numpy(_SHARED["tests"][job.block][1])).numpy()


def run_b(blocks, tests, jobs, config, procs):
    ctx = mp.get_context("fork")
    with ctx.Pool(procs, initializer=_init_worker, initargs=(blocks, tests, config)) as pool:
        return pool.map(_plain_job, jobs, chunksize=1)


# ---- (c) ours ------------------------------------------------------------------------------------


def run_c(blocks, tests, jobs, config):
    net = train_models(blocks, jobs, config)
    return predict(net, [tests[j.block][1] for j in jobs], config.threads)


def per_seed_plcc(preds, tests, jobs) -> dict[int, float]:
    by_seed: dict[int, list[float]] = {}
    for job, pred in zip(jobs, preds, strict=True):
        actual = tests[job.block][0]["vmaf"].to_numpy()
        by_seed.setdefault(job.key[0], []).append(agreement(pred, actual)["plcc"])
    return {s: float(np.nanmean(v)) for s, v in sorted(by_seed.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, help="a real corpus instead of the synthetic one")
    ap.add_argument("--frames", type=int, default=48, help="synthetic frames per encode (48 -> 5,184 rows)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs for all three (default 20 = 1/10 of 200)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1, help="(b): processes (default: one per core)")
    ap.add_argument("--skip-a", action="store_true", help="skip the slowest baseline")
    ap.add_argument("--skip-b", action="store_true", help="skip the multi-process baseline")
    ap.add_argument("--workers", type=int, default=0, help="(c): worker groups (0 = one per core)")
    args = ap.parse_args()

    df = load_corpus(args.corpus) if args.corpus else normalise(synthetic_corpus(n_sources=9, frames=args.frames))
    df = check_trainable(df)
    config = TrainConfig(epochs=args.epochs, workers=args.workers)
    folds, blocks, tests = prepare_folds(df, corpus_codec(df, config.codec_vocab))
    jobs = [Job(f, (seed, LOSO_TAG, source_key(sha))) for seed in range(args.seeds) for f, sha in enumerate(folds)]
    print(f"corpus: {len(df)} rows, {len(folds)} sources; {len(jobs)} models x {args.epochs} epochs; "
          f"{os.cpu_count()} cores; torch {torch.__version__}, default threads {torch.get_num_threads()}")

    results = {}
    order = (["a"] if not args.skip_a else []) + (["b"] if not args.skip_b else []) + ["c"]
    for name in order:
        t0 = time.perf_counter()
        if name == "a":
            preds = run_a(blocks, tests, jobs, config)
        elif name == "b":
            preds = run_b(blocks, tests, jobs, config, args.procs)
        else:
            preds = run_c(blocks, tests, jobs, config)
        results[name] = (time.perf_counter() - t0, per_seed_plcc(preds, tests, jobs))
        secs, plcc = results[name]
        print(f"({name}) {secs:8.1f} s   per-seed mean PLCC " + " ".join(f"{v:.4f}" for v in plcc.values()), flush=True)

    tc, pc = results["c"]
    for name in ("a", "b"):
        if name in results:
            t, p = results[name]
            diff = max(abs(p[s] - pc[s]) for s in pc)
            print(f"speedup (c) vs ({name}): {t / tc:6.1f}x   largest per-seed mean-PLCC difference {diff:.2e}")


if __name__ == "__main__":
    main()
