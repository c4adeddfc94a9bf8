"""Kill the pipeline with SIGKILL at random points in every step, rerun, and check nothing was lost or mixed.

    python bench/kill_resume.py                 # 14 kills (2 per phase), tiny demo settings
    python bench/kill_resume.py --kills 21 --seed 7 --keep runs/kill-bench

How: one uninterrupted reference run first (its step timings say how long each phase lasts). Then, per
trial, a fresh run directory: start `ensemble-kit pipeline`, wait until the target phase has begun (the
previous step's marker appears; polled every 1 ms), sleep a random fraction of that phase's duration,
SIGKILL the whole process group (ffmpeg children too: a power cut, an OOM kill), and rerun the same
command until it completes; every third trial is killed a second time during its resume. The final
verdict, LOSO folds and corpus must equal the reference run's, and no temp file or folder may survive
the completed rerun (not in the run directory, not in $TMPDIR, which points into the bench's folder). Excluded from "equal", because they are
measurements of wall time or of when the file was written, not results: the verdict's
`generated_at_utc` and the corpus' `enc_time_ms`/`score_time_ms` columns (the verdict's corpus
content sha256 leaves them out, so it is compared exactly).

The pipeline runs from a snapshot of kit/ (and environments/) taken at the start, so edits to the
working tree during the bench cannot make the reference and the reruns differ.

Prints one line per kill (target phase, where it actually landed, by the markers on disk) and a summary
with the count; exit 0 only if every rerun completed and every result matched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kit.core.rundir import RunDir  # noqa: E402
from kit.core.schema import MEASURED_COLUMNS  # noqa: E402
from kit.pipeline import STEPS  # noqa: E402

TINY = ["--demo-size", "96x64", "--demo-frames", "12", "--encoders", "libx264", "--cqs", "22,34", "--seeds", "0,1",
        "--epochs", "30", "--gate-mean-plcc", "0.5", "--gate-per-seed-min", "0.5", "--gate-plcc-spread-max", "1"]
# Phases a kill can target: startup (imports, prereqs, run.json) and each step after it.
PHASES = ("startup", *STEPS[1:])
TIMING_COLUMNS = MEASURED_COLUMNS
SNAPSHOT: dict[str, Path] = {"cwd": ROOT}  # where `python -m kit` runs (the snapshot's folder)
ENV: dict[str, str] = dict(os.environ)  # TMPDIR points into the bench's folder, so leftovers there are seen


def leftovers(out_dir: Path) -> list[str]:
    """Temp files and folders that survived a completed rerun: atomic writes' `.tmp` files, in-flight cell
    folders, and the kit's folders in the temp dir. A finished run leaves none."""
    found = [str(p.relative_to(out_dir)) for p in out_dir.rglob("*.tmp")]
    work = RunDir(out_dir).cells_work_dir
    found += [str(p.relative_to(out_dir)) for p in work.iterdir()] if work.is_dir() else []
    found += [str(p) for p in Path(ENV["TMPDIR"]).glob("ekit-*")]
    return found


def take_snapshot(base: Path) -> Path:
    src = base / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT / "kit", src / "kit", ignore=shutil.ignore_patterns("__pycache__"))
    if (ROOT / "environments").is_dir():
        shutil.copytree(ROOT / "environments", src / "environments")
    return src


def command(out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "kit", "pipeline", *TINY, "--quiet", "--out-dir", str(out_dir)]


def start(out_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(command(out_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=SNAPSHOT["cwd"], env=ENV)


def started_signal(out_dir: Path, phase: str) -> Path | None:
    """The file whose appearance means `phase` has begun (None: at process start)."""
    if phase == "startup":
        return None
    if phase == "corpus":
        return out_dir / "run.json"
    previous = STEPS[STEPS.index(phase) - 1]
    return RunDir(out_dir).marker(previous)


def landed(out_dir: Path) -> str:
    """Where the kill landed: the first step without a marker (markers are written after a step's outputs)."""
    if not (out_dir / "run.json").is_file():
        return "startup"
    for step in STEPS[1:]:
        if not RunDir(out_dir).marker(step).is_file():
            return step
    return "finished"


def kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have finished just before
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def kill_during(out_dir: Path, phase: str, duration: float, rng: random.Random, timeout: float = 300) -> str:
    proc = start(out_dir)
    t0 = time.monotonic()
    sig = started_signal(out_dir, phase)
    while sig is not None and not sig.exists():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            break
        time.sleep(0.001)
    # Aim into the first part of the phase: its length varies run to run on a busy box, and short steps
    # (verdict, bundle: ~0.1 s) are over soon after they start. Where a kill really landed is reported.
    share = 0.3 if phase == "startup" else 0.2 if duration < 0.3 else 0.6  # startup's estimate is the loosest
    time.sleep(rng.uniform(0.0, duration * share))
    kill_group(proc)
    return landed(out_dir)


def kill_at(out_dir: Path, delay: float) -> str:
    proc = start(out_dir)
    time.sleep(delay)
    kill_group(proc)
    return landed(out_dir)


def complete(out_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(out_dir), capture_output=True, text=True, cwd=SNAPSHOT["cwd"], timeout=900, env=ENV)


def phase_durations(stderr: str, total: float) -> dict[str, float]:
    """Per-phase seconds from a verbose run's step lines ('[3/7] train ... [2.5 s]'); startup is the rest."""
    found = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\[\d+/\d+\] (\w+)\s.*\[([\d.]+) s\]$", stderr, re.M)}
    steps = {s: max(found.get(s, 0.2), 0.05) for s in STEPS[1:]}
    return {"startup": max(total - sum(steps.values()), 0.5), **steps}


def results(out_dir: Path) -> dict[str, object]:
    verdict = json.loads((out_dir / "verdict.json").read_text())
    verdict.pop("generated_at_utc", None)
    corpus = pd.read_parquet(out_dir / "corpus.parquet").drop(columns=list(TIMING_COLUMNS))
    return {"verdict": verdict, "folds": (out_dir / "loso" / "folds.csv").read_bytes(), "corpus": corpus}


def same(a: dict[str, object], b: dict[str, object]) -> list[str]:
    problems = []
    if a["verdict"] != b["verdict"]:
        keys = sorted(k for k in set(a["verdict"]) | set(b["verdict"]) if a["verdict"].get(k) != b["verdict"].get(k))
        problems.append(f"verdict differs in {keys}")
    if a["folds"] != b["folds"]:
        problems.append("loso/folds.csv differs")
    ca, cb = a["corpus"], b["corpus"]
    if ca.shape != cb.shape or not ca.equals(cb):
        problems.append(f"corpus differs ({ca.shape} vs {cb.shape})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=14, help="kill trials (>= 10; spread over every phase)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="keep the run directories here (default: a temp dir, removed)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    base = args.keep or Path(tempfile.mkdtemp(prefix="ekit-kill-"))
    base.mkdir(parents=True, exist_ok=True)
    SNAPSHOT["cwd"] = take_snapshot(base)
    ENV["TMPDIR"] = str(base / "tmp")
    (base / "tmp").mkdir(exist_ok=True)
    try:
        ref_dir = base / "reference"
        shutil.rmtree(ref_dir, ignore_errors=True)
        t0 = time.monotonic()
        ref = subprocess.run([c for c in command(ref_dir) if c != "--quiet"], capture_output=True, text=True,
                             cwd=SNAPSHOT["cwd"], env=ENV)
        total = time.monotonic() - t0
        if ref.returncode not in (0, 1):
            print(ref.stderr[-3000:])
            print("reference run failed")
            return 2
        durations = phase_durations(ref.stderr, total)
        reference = results(ref_dir)
        print(f"reference run: {total:.1f} s, exit {ref.returncode}; phases "
              + ", ".join(f"{p} {d:.1f}s" for p, d in durations.items()))

        kills, reruns, matched, failures = 0, 0, 0, []
        landed_at: dict[str, int] = {}
        for trial in range(args.kills):
            phase = PHASES[trial % len(PHASES)]
            out = base / f"trial{trial:02d}"
            shutil.rmtree(out, ignore_errors=True)
            where = kill_during(out, phase, durations[phase], rng)
            kills += 1
            landed_at[where] = landed_at.get(where, 0) + 1
            line = f"trial {trial:2d}: SIGKILL aimed at {phase:<8} landed in {where:<8}"
            if trial % 3 == 2:  # kill the resume too, at a random point of what is left
                where2 = kill_at(out, rng.uniform(0.5, max(0.6, total * 0.8)))
                kills += 1
                landed_at[where2] = landed_at.get(where2, 0) + 1
                line += f"; resume SIGKILLed in {where2:<8}"
            final = complete(out)
            reruns += 1
            if final.returncode != ref.returncode:
                failures.append(f"trial {trial}: rerun exit {final.returncode} (reference {ref.returncode}): "
                                f"{final.stderr.strip().splitlines()[-1:] }")
                print(line + " -> RERUN FAILED")
                continue
            problems = same(reference, results(out))
            if left := leftovers(out):
                problems.append(f"temp leftovers after the rerun: {', '.join(left[:5])}")
            if problems:
                failures.append(f"trial {trial}: {'; '.join(problems)}")
                print(line + " -> DIFFERENT: " + "; ".join(problems))
                continue
            matched += 1
            print(line + " -> rerun completed, results equal, no temp leftovers")
        print(f"kill/resume: {kills} SIGKILLs in {args.kills} trials (landed: "
              + ", ".join(f"{p} {landed_at[p]}" for p in (*PHASES, "finished") if p in landed_at)
              + f"); {reruns} reruns completed with the reference exit code; {matched}/{args.kills} equal to the "
              "uninterrupted run (verdict, LOSO folds, corpus) with no .tmp file or temp folder left")
        for f in failures:
            print("FAIL", f)
        return 0 if not failures and matched == args.kills and kills >= 10 else 1
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
