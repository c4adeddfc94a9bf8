"""`ensemble-kit pipeline`: prereqs -> corpus -> train -> verdict -> export (PROMOTE) -> report -> bundle.

WHY it is built this way:
- One run directory per run. `run.json` is written once, first, with the resolved options and the
  environment fingerprint; it never changes afterwards, so the bundle of a run is byte-stable.
- Resume: each finished step leaves a marker `.pipeline/steps/<step>.json` with the hash of its inputs
  and the sha256 of every file it wrote. A rerun skips a step whose marker matches its current inputs
  and whose outputs are intact; corpus cells are reused by the corpus engine itself. A SIGKILL at any
  point leaves whole files only (kit.fsio), so the rerun picks up where the run stopped.
- A rerun with options that would mix results (other encoders, cqs, seeds, training config, sources,
  environment) is refused with the differences named, unless `--fresh` moves the old run aside
  (`<out-dir>.old-<utc>`; nothing is deleted).
- The verdict decides PROMOTE/HOLD from `verdict.json` itself, never from which files exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kit import __version__
from kit.core.console import Progress, err, warn
from kit.core.errors import BadInput, PrereqError
from kit.core.fsio import append_line, canonical_json, read_json, sha256_file, write_json
from kit.core.rundir import RunDir
from kit.train.config import DEFAULT_SEEDS, TrainConfig

RUN_SCHEMA = "ensemble-kit/pipeline-run"
RUN_SCHEMA_VERSION = 1
PIPELINE_DIR = ".pipeline"
STEPS: tuple[str, ...] = ("prereqs", "corpus", "train", "verdict", "export", "report", "bundle")

# The demo: small deterministic lavfi clips so the whole pipeline runs in well under 3 minutes on 2 cores.
DEMO_CLIP_SIZE = (192, 108)
DEMO_FRAMES = 30
DEMO_CQS: tuple[int, ...] = (22, 30, 38)
DEMO_EPOCHS = 100
# The demo's clips: all of kit.demo's except the zone plate. Its features lie far outside the other
# sources', so a model trained on five synthetic clips cannot predict it (held-out PLCC 0.1-0.7) and the
# demo would always HOLD, never showing an export. Measured with these settings: PROMOTE, mean PLCC
# ~0.987, seed spread ~0.002.
DEMO_EXCLUDE = ("demo_zoneplate",)
# Demo clips are inputs, not results: they live in the tool cache (byte-identical on every box), never in
# the run directory, so they are never bundled and --fresh does not have to move them.


# ---- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineOptions:
    """What the user asked for; `resolve()` turns the Nones into this box's defaults."""

    out_dir: Path
    ref_dir: Path | None = None  # None: the demo clips
    encoders: tuple[str, ...] | None = None  # None: the platform's encoders that pass a test encode
    cqs: tuple[int, ...] | None = None  # None: kit.corpus.encoders.DEFAULT_CQS (DEMO_CQS for the demo)
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    jobs: int | None = None  # cells in parallel; does not change results
    train_overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields given on the CLI
    gate_overrides: dict[str, Any] = field(default_factory=dict)  # gate thresholds given on the CLI
    ffmpeg: str | None = None
    fresh: bool = False
    quiet: bool = False
    demo_frames: int = DEMO_FRAMES
    demo_size: tuple[int, int] = DEMO_CLIP_SIZE

    @property
    def demo(self) -> bool:
        return self.ref_dir is None


# Options that change results: a rerun that differs in any of these would mix two runs in one directory.
RESULT_KEYS: tuple[str, ...] = ("demo", "ref_sources", "encoders", "cqs", "seeds", "train", "gate", "vmaf_model",
                                "demo_clips")
# Training settings that change speed, not results (the trainer guarantees it): a resume may change them.
RESULT_NEUTRAL_TRAIN: tuple[str, ...] = ("workers",)


def result_train_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in RESULT_NEUTRAL_TRAIN}


@dataclass
class StepReport:
    name: str
    status: str  # "done" | "reused" | "skipped" | "failed"
    detail: str = ""
    seconds: float = 0.0


@dataclass
class PipelineResult:
    run_dir: Path
    verdict: str  # PROMOTE | HOLD
    bundle: Path | None
    bundle_sha256: str | None
    steps: list[StepReport]
    recommendation: str = ""
    wall_s: float = 0.0


# ---- small helpers ---------------------------------------------------------------------------------


def _utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj, indent=None).encode()).hexdigest()


def _markers_dir(root: Path) -> Path:
    return root / PIPELINE_DIR / "steps"


def _files_under(root: Path, sub: Path) -> list[Path]:
    if not sub.exists():
        return []
    if sub.is_file():
        return [sub]
    return sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith("."))


def _rel(root: Path, p: Path) -> str:
    return p.resolve().relative_to(root.resolve()).as_posix()


def _say(options: PipelineOptions, text: str) -> None:
    if not options.quiet:
        err.print(text, markup=False)


# ---- step markers ----------------------------------------------------------------------------------


def marker_path(root: Path, step: str) -> Path:
    return _markers_dir(root) / f"{step}.json"


def step_done(root: Path, step: str, key: str) -> dict[str, Any] | None:
    """The marker if `step` finished with these inputs and its outputs are still intact, else None."""
    path = marker_path(root, step)
    if not path.is_file():
        return None
    try:
        marker = read_json(path, what="step marker")
    except BadInput:
        return None
    if not isinstance(marker, dict) or marker.get("key") != key:
        return None
    for rel, digest in (marker.get("outputs") or {}).items():
        p = root / rel
        if not p.is_file() or sha256_file(p) != digest:
            return None
    return marker


def mark_done(root: Path, step: str, key: str, outputs: list[Path], info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Written after the step's outputs, atomically: a marker exists only for a whole step."""
    marker = {"step": step, "key": key, "outputs": {_rel(root, p): sha256_file(p) for p in outputs},
              "info": info or {}}
    write_json(marker_path(root, step), marker)
    return marker


def clear_marker(root: Path, step: str) -> None:
    marker_path(root, step).unlink(missing_ok=True)


def outputs_digest(marker: dict[str, Any]) -> str:
    return _key(marker.get("outputs") or {})


def move_aside(path: Path, root: Path, why: str) -> Path | None:
    """Results that no longer belong to this run are moved under .pipeline/stale/, never deleted."""
    if not path.exists():
        return None
    dest = root / PIPELINE_DIR / "stale" / f"{path.name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    path.replace(dest)
    warn(f"{_rel(root, path) if path.is_relative_to(root) else path}: {why}; moved to {_rel(root, dest)}")
    return dest


# ---- the run directory: one run, never two mixed -------------------------------------------------------


def _acquire(root: Path) -> Any:
    """One pipeline per run directory at a time: an flock the OS releases even on SIGKILL."""
    lock_path = root / PIPELINE_DIR / "lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(lock_path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise BadInput(f"another ensemble-kit pipeline is running in {root}",
                       hint="wait for it to finish, or pick another --out-dir") from None
    return fh


def _has_content(root: Path) -> bool:
    return any(p.name != PIPELINE_DIR or any(q.name != "lock" for q in p.iterdir()) for p in root.iterdir())


@contextlib.contextmanager
def locked_run_dir(options: PipelineOptions) -> Iterator[Path]:
    """Create/lock the run directory; with --fresh move an existing run aside (under the lock) first."""
    root = Path(options.out_dir)
    if root.exists() and not root.is_dir():
        raise BadInput(f"--out-dir {root} is a file", hint="pass a directory (it is created if missing)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--out-dir {root} cannot be created: {exc.strerror}", hint="pick a writable directory") from None
    lock = _acquire(root)
    try:
        if options.fresh and _has_content(root):
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            aside = root.with_name(f"{root.name}.old-{stamp}")
            n = 1
            while aside.exists():
                n += 1
                aside = root.with_name(f"{root.name}.old-{stamp}-{n}")
            root.rename(aside)
            root.mkdir()
            new_lock = _acquire(root)
            lock.close()
            lock = new_lock
            warn(f"--fresh: the previous run in {root} was moved to {aside} (nothing deleted)")
        yield root
    finally:
        lock.close()


def _describe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    for key in RESULT_KEYS:
        a, b = old.get(key), new.get(key)
        if key == "train" and isinstance(a, dict) and isinstance(b, dict):
            a, b = result_train_config(a), result_train_config(b)
        if a != b:
            if key == "ref_sources":
                a = f"{len(a or [])} sources" if a is not None else None
                b = f"{len(b or [])} sources (different content)" if b is not None else None
            diffs.append(f"{key} {canonical_json(a, indent=None).strip()} -> {canonical_json(b, indent=None).strip()}")
    return diffs


def prepare_run_dir(options: PipelineOptions, resolved: dict[str, Any], fingerprint: dict[str, Any],
                    fingerprint_id: str) -> tuple[RunDir, bool]:
    """Create or reopen the run directory; -> (run dir, resumed). Refuses to mix two runs' results."""
    root = Path(options.out_dir)
    rd = RunDir(root)
    if rd.run_json.is_file():
        try:
            old = read_json(rd.run_json, what="run.json")
        except BadInput:
            raise BadInput(f"{rd.run_json} is corrupt", hint="pass --fresh to move the old run aside and start anew") from None
        if not isinstance(old, dict) or old.get("schema") != RUN_SCHEMA:
            raise BadInput(f"{rd.run_json} was not written by `ensemble-kit pipeline`",
                           hint="pick another --out-dir, or --fresh to move this one aside")
        diffs = _describe_differences(old.get("options", {}), resolved)
        if old.get("fingerprint_id") != fingerprint_id:
            keys = _fingerprint_diff(old.get("fingerprint") or {}, fingerprint)
            diffs.append(f"environment fingerprint {old.get('fingerprint_id')} -> {fingerprint_id}"
                         + (f" ({', '.join(keys[:5])})" if keys else ""))
        if diffs:
            raise BadInput(
                f"{root} holds a run with other settings, and resuming would mix results: {'; '.join(diffs)}",
                hint="rerun with the same options to resume, pass --fresh to move the old run aside, or pick another --out-dir",
            )
        return rd, True
    if root.is_dir():
        foreign = sorted(p.name for p in root.iterdir() if p.name != PIPELINE_DIR)
        if foreign:
            raise BadInput(f"--out-dir {root} is not empty and holds no pipeline run (found {foreign[0]})",
                           hint="pick an empty or new --out-dir, or pass --fresh to move its contents aside")
    root.mkdir(parents=True, exist_ok=True)
    from kit.env import platform as kit_platform

    write_json(rd.run_json, {
        "schema": RUN_SCHEMA,
        "schema_version": RUN_SCHEMA_VERSION,
        "kit_version": __version__,
        "started_at_utc": _utc(),
        "platform": kit_platform.detect().tag,
        "box_id": kit_platform.box_id(),
        "options": resolved,
        "jobs": options.jobs,
        "fingerprint": fingerprint,
        "fingerprint_id": fingerprint_id,
    })
    return rd, False


def _fingerprint_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    from kit.results.bundle import flatten

    fa, fb = flatten(a), flatten(b)
    return [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


# ---- steps ------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What the steps share within one invocation."""

    options: PipelineOptions
    rd: RunDir
    ff: Any
    sources: list[Any]
    encoders: list[str]
    cqs: tuple[int, ...]
    config: TrainConfig
    gate: dict[str, Any]
    resolved: dict[str, Any]
    reports: list[StepReport] = field(default_factory=list)
    verdict: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.rd.root


def check_options(options: PipelineOptions) -> None:
    """Mistakes in what the user typed are bad input (exit 2), found before any probing or work."""
    from kit.corpus import encoders as enc_table

    out = Path(options.out_dir)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out-dir {out} is a file", hint="pass a directory (it is created if missing)")
    if options.ref_dir is not None and not Path(options.ref_dir).is_dir():
        raise BadInput(f"--ref-dir {options.ref_dir} is not a directory", hint="pass the folder holding your reference clips")
    for name in options.encoders or ():
        encoder = enc_table.get(name)  # an unknown name is bad input, not a missing prerequisite
        for cq in options.cqs or ():
            encoder.check_cq(cq)
    TrainConfig().with_overrides(**options.train_overrides)  # out-of-range values name their flag
    unknown = set(options.gate_overrides) - set(_gate_defaults())
    if unknown:
        raise BadInput(f"unknown gate threshold(s): {', '.join(sorted(unknown))}", hint=f"use {', '.join(_gate_defaults())}")
    if not options.seeds:
        raise BadInput("--seeds is empty", hint="e.g. --seeds 0,1,2,3,4")


def check_prereqs(options: PipelineOptions) -> Any:
    """The same PASS/WARN/FAIL table as `ensemble-kit prereqs`; any FAIL stops the run with exit 3."""
    from kit.env import prereqs

    report = prereqs.run_prereqs(encoders=list(options.encoders) if options.encoders else None,
                                 out_dir=Path(options.out_dir), ref_dir=options.ref_dir, ffmpeg=options.ffmpeg,
                                 jobs=options.jobs)
    for check in report.checks:
        if check.status == "WARN":
            warn(f"{check.name}: {check.detail}" + (f" ({check.hint})" if check.hint else ""))
        elif check.status == "FAIL" and not options.quiet:
            err.print(f"FAIL {check.name}: {check.detail}" + (f" ({check.hint})" if check.hint else ""), markup=False)
    prereqs.require(report)
    return report


def _find_tools(options: PipelineOptions) -> Any:
    from kit.corpus import ffmpeg as tools

    return tools.find_ffmpeg(options.ffmpeg)  # PrereqError (exit 3) naming what is missing


def _resolve_encoders(options: PipelineOptions, prereq_report: Any) -> list[str]:
    """--encoders as given, else what the prereqs table chose: the family's encoders that really encode."""
    if options.encoders:
        return list(options.encoders)
    if not prereq_report.encoders:
        raise PrereqError("no encoder passes a test encode on this box",
                          hint="run `ensemble-kit prereqs` to see why each one failed")
    return list(prereq_report.encoders)


def _demo_sources(options: PipelineOptions, ff: Any) -> Path:
    from kit.corpus import demo
    from kit.corpus import ffmpeg as tools

    w, h = options.demo_size
    names = demo_clip_names()
    dest = tools.cache_dir() / "demo-refs" / f"{w}x{h}-{options.demo_frames}f-{len(names)}clips"
    return demo.make_demo_sources(dest, ff, width=w, height=h, frames=options.demo_frames, names=names)


def demo_clip_names() -> tuple[str, ...]:
    from kit.corpus import demo

    return tuple(n for n in demo.DEMO_CLIPS if n not in DEMO_EXCLUDE)


def _gate_defaults() -> dict[str, Any]:
    from kit.results import gate

    return dict(gate.GATE_DEFAULTS)


def resolve(options: PipelineOptions, prereq_report: Any) -> tuple[dict[str, Any], Any, list[Any], list[str],
                                                                  tuple[int, ...], TrainConfig, dict[str, Any]]:
    """Fill in this box's defaults; everything that decides results ends up in the returned dict."""
    from kit.core.schema import DEFAULT_VMAF_MODEL
    from kit.corpus import encoders as enc_table
    from kit.corpus import sources as kit_sources

    ff = _find_tools(options)
    encoders = _resolve_encoders(options, prereq_report)
    cqs = tuple(sorted(set(options.cqs))) if options.cqs else (DEMO_CQS if options.demo else tuple(enc_table.DEFAULT_CQS))
    for name in encoders:
        for cq in cqs:
            enc_table.get(name).check_cq(cq)
    train_defaults: dict[str, Any] = {"epochs": DEMO_EPOCHS} if options.demo else {}
    config = TrainConfig().with_overrides(**{**train_defaults, **options.train_overrides})
    gate = {**_gate_defaults(), **{k: v for k, v in options.gate_overrides.items() if v is not None}}
    if options.demo:
        ref_dir = _demo_sources(options, ff)
    else:
        ref_dir = Path(options.ref_dir)  # type: ignore[arg-type]
        if not ref_dir.exists():
            raise BadInput(f"--ref-dir {ref_dir} does not exist", hint="pass the folder holding your reference clips")
    srcs = kit_sources.discover(ref_dir, ff=ff)
    from kit.train.data import MIN_SOURCES

    if len(srcs) < MIN_SOURCES:  # say so before hours of encoding, not after
        raise BadInput(f"--ref-dir {ref_dir} holds {len(srcs)} distinct clip(s); leave-one-source-out needs at least "
                       f"{MIN_SOURCES}", hint="add reference clips (different content) to the folder")
    resolved = {
        "demo": options.demo,
        "ref_dir": None if options.demo else str(Path(ref_dir).resolve()),
        "ref_sources": [{"src": s.src, "src_sha256": s.src_sha256} for s in srcs],
        "demo_clips": {"size": list(options.demo_size), "frames": options.demo_frames,
                       "names": list(demo_clip_names())} if options.demo else None,
        "encoders": encoders,
        "cqs": list(cqs),
        "seeds": list(options.seeds),
        "train": config.to_dict(),
        "gate": gate,
        "vmaf_model": DEFAULT_VMAF_MODEL,
        "ffmpeg": {"version": ff.version, "libvmaf_version": ff.libvmaf_version, "origin": ff.origin},
    }
    return resolved, ff, srcs, encoders, cqs, config, gate


def _progress(ctx: Context, label: str) -> tuple[Callable[[int], None], Callable[..., None], Callable[[], None]]:
    """(on_plan, on_tick, close) of the shared progress display; the bar clears itself when the step ends."""
    bar = Progress(label, quiet=ctx.options.quiet, transient=True)
    return bar.plan, bar.tick, bar.close


def step_corpus(ctx: Context) -> StepReport:
    from kit.corpus import engine as corpus

    key = _key({"step": "corpus", "sources": ctx.resolved["ref_sources"], "encoders": ctx.encoders,
                "cqs": list(ctx.cqs), "ffmpeg": ctx.resolved["ffmpeg"], "model": ctx.resolved["vmaf_model"]})
    if step_done(ctx.root, "corpus", key):
        return StepReport("corpus", "reused", "corpus.parquet from the earlier run")
    on_plan, on_tick, close = _progress(ctx, "corpus")

    def on_cell(outcome: Any, done: int, total: int) -> None:
        if outcome.status == "failed" and not ctx.options.quiet:
            err.print(f"      cell failed: {outcome.cell.label}: {outcome.reason}", markup=False)
        on_tick(done, total)

    try:  # run_corpus kills its tools itself when interrupted
        summary = corpus.run_corpus(ctx.rd, ctx.sources, ctx.encoders, ctx.cqs, ff=ctx.ff, jobs=ctx.options.jobs,
                                    progress=on_cell, on_plan=on_plan)
    finally:
        close()
    summary.raise_if_failed(ctx.rd.failures,
                            hint="fix the cause (see `ensemble-kit prereqs`) and rerun the same command: it resumes")
    mark_done(ctx.root, "corpus", key, [ctx.rd.corpus], {"rows": summary.corpus_rows})
    return StepReport("corpus", "done", f"{summary.done} cells encoded + scored, {summary.reused} reused; "
                      f"{summary.corpus_rows} rows from {len(ctx.sources)} sources")


def _corpus_marker(ctx: Context) -> dict[str, Any]:
    return read_json(marker_path(ctx.root, "corpus"), what="corpus step marker")


def step_train(ctx: Context) -> StepReport:
    from kit.train import loso
    from kit.train.data import load_corpus

    key = _key({"step": "train", "corpus": outputs_digest(_corpus_marker(ctx)),
                "config": result_train_config(ctx.config.to_dict()),
                "seeds": list(ctx.options.seeds)})
    if step_done(ctx.root, "train", key):
        return StepReport("train", "reused", "LOSO results from the earlier run")
    if ctx.rd.loso_dir.exists() and marker_path(ctx.root, "train").is_file():
        move_aside(ctx.rd.loso_dir, ctx.root, "LOSO results of older inputs")
    clear_marker(ctx.root, "train")
    df = load_corpus(ctx.rd.corpus)
    n_models = len(ctx.options.seeds) * df["src_sha256"].nunique()
    on_plan, on_tick, close = _progress(ctx, f"train {n_models} models")
    on_plan(ctx.config.epochs)
    try:
        result = loso.run_loso(df, ctx.config, ctx.options.seeds, ctx.rd.loso_dir,
                               progress=lambda done, total: on_tick(done, total))
    finally:
        close()
    outputs = [ctx.rd.loso_dir / "summary.json", ctx.rd.loso_dir / "folds.csv",
               *(ctx.rd.loso_dir / f"seed{s}" / "predictions.parquet" for s in result.seeds)]
    mark_done(ctx.root, "train", key, outputs)
    per_seed = result.per_seed()
    means = ", ".join(f"{s}: {v['mean']:.4f}" for s, v in per_seed.items())
    return StepReport("train", "done", f"{len(result.seeds)} seeds x {result.folds['fold_src_sha256'].nunique()} "
                      f"folds; mean PLCC per seed {means}")


def step_verdict(ctx: Context) -> StepReport:
    train_marker = read_json(marker_path(ctx.root, "train"), what="train step marker")
    key = _key({"step": "verdict", "loso": outputs_digest(train_marker), "gate": ctx.gate})
    if step_done(ctx.root, "verdict", key) is not None:
        ctx.verdict = read_json(ctx.rd.verdict, what="verdict.json")
        return StepReport("verdict", "reused", _verdict_line(ctx.verdict))
    ctx.verdict = run_gate(ctx)
    mark_done(ctx.root, "verdict", key, [ctx.rd.verdict], {"verdict": ctx.verdict["verdict"]})
    return StepReport("verdict", "done", _verdict_line(ctx.verdict))


def _verdict_line(verdict: dict[str, Any]) -> str:
    gate = verdict.get("gate") or {}
    mean, spread = gate.get("mean_plcc"), gate.get("plcc_spread")
    nums = []
    if isinstance(mean, int | float):
        nums.append(f"mean PLCC {mean:.4f}")
    if isinstance(spread, int | float):
        nums.append(f"spread {spread:.4f}")
    return f"{verdict['verdict']}" + (f": {', '.join(nums)}" if nums else "")


def step_export(ctx: Context) -> StepReport:
    if ctx.verdict.get("verdict") != "PROMOTE":
        clear_marker(ctx.root, "export")
        if ctx.rd.models_dir.exists():
            move_aside(ctx.rd.models_dir, ctx.root, "models from an earlier verdict; this run's verdict is HOLD")
        return StepReport("export", "skipped", "HOLD: no models exported")
    verdict_marker = read_json(marker_path(ctx.root, "verdict"), what="verdict step marker")
    key = _key({"step": "export", "verdict": outputs_digest(verdict_marker), "corpus": outputs_digest(_corpus_marker(ctx))})
    if step_done(ctx.root, "export", key):
        return StepReport("export", "reused", "models from the earlier run")
    if ctx.rd.models_dir.exists():
        move_aside(ctx.rd.models_dir, ctx.root, "models of older inputs")
    outputs = run_export(ctx)
    mark_done(ctx.root, "export", key, outputs)
    n_onnx = sum(1 for p in outputs if p.suffix == ".onnx")
    return StepReport("export", "done", f"{n_onnx} ONNX models, onnxruntime parity checked")


def step_report(ctx: Context) -> StepReport:
    verdict_marker = read_json(marker_path(ctx.root, "verdict"), what="verdict step marker")
    train_marker = read_json(marker_path(ctx.root, "train"), what="train step marker")
    key = _key({"step": "report", "verdict": outputs_digest(verdict_marker), "loso": outputs_digest(train_marker),
                "corpus": outputs_digest(_corpus_marker(ctx))})
    if step_done(ctx.root, "report", key):
        return StepReport("report", "reused", str(ctx.rd.report_dir / "index.html"))
    if ctx.rd.report_dir.exists() and marker_path(ctx.root, "report").is_file():
        move_aside(ctx.rd.report_dir, ctx.root, "report of older inputs")
    outputs = run_report(ctx)
    mark_done(ctx.root, "report", key, outputs)
    return StepReport("report", "done", str(ctx.rd.report_dir / "index.html"))


def step_bundle(ctx: Context) -> StepReport:
    from kit.results import bundle

    markers = [m for m in ("corpus", "train", "verdict", "export", "report") if marker_path(ctx.root, m).is_file()]
    key = _key({"step": "bundle", "inputs": [outputs_digest(read_json(marker_path(ctx.root, m))) for m in markers],
                "run": sha256_file(ctx.rd.run_json)})
    if (m := step_done(ctx.root, "bundle", key)) is not None:
        path = ctx.root / next(iter(m["outputs"]))
        return StepReport("bundle", "reused", f"{path} sha256 {m['outputs'][_rel(ctx.root, path)]}")
    result = bundle.make_bundle(ctx.root)
    mark_done(ctx.root, "bundle", key, [result.path], {"sha256": result.sha256})
    return StepReport("bundle", "done", f"{result.path} sha256 {result.sha256}")


# ---- adapters to the trainer's modules (gate, export, report) -------------------------------------------


def run_gate(ctx: Context) -> dict[str, Any]:
    """verdict.json from the LOSO results with this run's thresholds; -> the verdict document."""
    from kit.results import gate

    return gate.write_verdict(ctx.root, **ctx.gate)


def run_export(ctx: Context) -> list[Path]:
    """Per-seed ONNX + sidecars + ensemble.json; the exporter's parity failure is WorkFailed (exit 4)."""
    from kit.results import export

    on_plan, on_tick, close = _progress(ctx, f"export {len(ctx.options.seeds)} models")
    on_plan(ctx.config.epochs)
    try:
        ensemble = export.export_run(ctx.root, progress=lambda done, total: on_tick(done, total))
    finally:
        close()
    files = [ctx.rd.models_dir / "ensemble.json"]
    for member in ensemble["members"]:
        files += [ctx.rd.models_dir / member["onnx"], ctx.rd.models_dir / member["sidecar"]]
    return files


def run_report(ctx: Context) -> list[Path]:
    from kit.results import report
    from kit.results.bundle import report_files
    from kit.train.data import load_corpus

    report.build_report(ctx.root, load_corpus(ctx.rd.corpus))
    return report_files(ctx.rd.report_dir)


STEP_FUNCTIONS: dict[str, Callable[[Context], StepReport]] = {
    "corpus": step_corpus,
    "train": step_train,
    "verdict": step_verdict,
    "export": step_export,
    "report": step_report,
    "bundle": step_bundle,
}


# ---- the run ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, `kill`) ends the run like Ctrl-C: exit 130, finished work kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_pipeline(options: PipelineOptions) -> PipelineResult:
    """The whole job. Raises KitError subclasses for the documented exit codes; returns PROMOTE/HOLD."""
    from kit.env import fingerprint as environment

    t0 = time.perf_counter()
    n = len(STEPS)
    with _sigterm_as_interrupt():
        check_options(options)
        prereq_report = check_prereqs(options)
        resolved, ff, srcs, encoders, cqs, config, gate = resolve(options, prereq_report)
        fp = environment.fingerprint(ff)
        fp_id = environment.fingerprint_id(fp)
        with locked_run_dir(options):
            rd, resumed = prepare_run_dir(options, resolved, fp, fp_id)
            append_line(rd.root / PIPELINE_DIR / "log.jsonl", canonical_json(
                {"utc": _utc(), "event": "resume" if resumed else "start", "jobs": options.jobs, "pid": os.getpid()},
                indent=None))
            where = "demo clips" if options.demo else f"{len(srcs)} clips from {options.ref_dir}"
            _say(options, f"ensemble-kit pipeline -> {rd.root} ({where}; {resolved_summary(resolved)})"
                 + (" [resuming]" if resumed else ""))
            _say(options, f"[1/{n}] prereqs  ok: ffmpeg {ff.version} ({ff.origin}), libvmaf {ff.libvmaf_version}; "
                 f"encoders {', '.join(encoders)}; environment {fp_id}")
            ctx = Context(options=options, rd=rd, ff=ff, sources=srcs, encoders=encoders, cqs=cqs, config=config,
                          gate=gate, resolved=resolved)
            ctx.reports.append(StepReport("prereqs", "done"))
            for i, name in enumerate(STEPS[1:], start=2):
                started = time.perf_counter()
                report = STEP_FUNCTIONS[name](ctx)
                report.seconds = time.perf_counter() - started
                ctx.reports.append(report)
                tag = {"reused": " (done earlier)", "skipped": " (skipped)"}.get(report.status, "")
                _say(options, f"[{i}/{n}] {name:<8} {report.detail}{tag} [{report.seconds:.1f} s]")
            bundle_marker = read_json(marker_path(rd.root, "bundle"))
            bundle_rel = next(iter(bundle_marker["outputs"]))
            return PipelineResult(run_dir=rd.root, verdict=ctx.verdict["verdict"], bundle=rd.root / bundle_rel,
                                  bundle_sha256=bundle_marker["outputs"][bundle_rel], steps=ctx.reports,
                                  recommendation=str(ctx.verdict.get("recommendation") or ""),
                                  wall_s=time.perf_counter() - t0)


def parse_size(text: str) -> tuple[int, int]:
    """'192x108' -> (192, 108); even sizes from 64 up (yuv420p and libvmaf's smallest filter windows)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BadInput(f"--demo-size {text!r} is not WxH", hint="e.g. --demo-size 192x108") from None
    if w < 64 or h < 64 or w % 2 or h % 2:
        raise BadInput(f"--demo-size {text}: width and height must be even and at least 64", hint="e.g. --demo-size 128x72")
    return w, h


def resolved_summary(resolved: dict[str, Any]) -> str:
    return (f"encoders {','.join(resolved['encoders'])}; cqs {','.join(map(str, resolved['cqs']))}; "
            f"seeds {','.join(map(str, resolved['seeds']))}; epochs {resolved['train']['epochs']}")

