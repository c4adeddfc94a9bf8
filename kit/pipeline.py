"""`ensemble-kit pipeline`: prereqs -> corpus -> train -> verdict -> export (PROMOTE) -> report -> bundle.

WHY it is built this way:
- One run directory per run. `run.json` is written once, first, with the resolved options and the
  environment fingerprint; it never changes afterwards, so the bundle of a run is byte-stable.
- Resume: each finished step leaves a marker (`RunDir.mark_done`: the hash of its inputs and the sha256
  of every file it wrote). A rerun skips a step whose marker matches its current inputs and whose
  outputs are intact; corpus cells are reused by the corpus engine itself. A SIGKILL at any point
  leaves whole files only (kit.core.fsio), so the rerun picks up where the run stopped.
- A rerun with options that would mix results (other encoders, cqs, seeds, training config, sources,
  environment) is refused with the differences named, unless `--fresh` moves the old run aside
  (`<out-dir>.old-<utc>`; nothing is deleted).
- The verdict decides PROMOTE/HOLD from `verdict.json` itself, never from which files exist.
- The corpus options resolve through `kit.corpus.inputs`, exactly as `ensemble-kit corpus` does; a
  directory holding only a corpus run (e.g. a cluster's shards) is adopted and its cells reused.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kit import __version__
from kit.core import proc
from kit.core.console import Progress, err, printable, warn
from kit.core.errors import BadInput
from kit.core.fsio import append_line, canonical_json, read_json, sha256_file, write_json
from kit.core.ids import digest
from kit.core.locking import HeldLock, Holder, try_acquire
from kit.core.rundir import PIPELINE_DIR, RunDir
from kit.core.schema import DEFAULT_VMAF_MODEL
from kit.corpus import dask_executor, demo, engine
from kit.corpus.ffmpeg import FFmpeg, find_ffmpeg
from kit.corpus.inputs import CorpusRequest, ResolvedCorpus, resolve
from kit.corpus.sources import Source
from kit.corpus.vmaf_cli import VmafCli, choose_scorer, scorer_fingerprint, scorer_identity
from kit.env import fingerprint as env_fingerprint
from kit.env import platform as kit_platform
from kit.env import prereqs
from kit.results import bundle, export, gate, report
from kit.results.thresholds import GATE_DEFAULTS, PROMOTE, Thresholds
from kit.train import loso
from kit.train.config import DEFAULT_SEEDS, TrainConfig, result_train_config
from kit.train.data import MIN_SOURCES, load_corpus

RUN_SCHEMA = "ensemble-kit/pipeline-run"
RUN_SCHEMA_VERSION = 1
STEPS: tuple[str, ...] = ("prereqs", "corpus", "train", "verdict", "export", "report", "bundle")


# ---- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineOptions:
    """What the user asked for; `resolve_run()` turns the Nones into this box's defaults."""

    out_dir: Path
    ref_dir: Path | None = None  # None: the demo clips
    encoders: tuple[str, ...] | None = None  # None: the platform's encoders that pass a test encode
    cqs: tuple[int, ...] | None = None  # None: kit.corpus.encoders.DEFAULT_CQS (DEMO_CQS for the demo)
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    jobs: int | None = None  # cells in parallel; does not change results
    executor: str = "threads"  # what runs the cells (kit.corpus.dask_executor.EXECUTORS); does not change results
    dask_scheduler: str | None = None  # --executor dask: a running scheduler (None: a LocalCluster)
    train_overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields given on the CLI
    gate_overrides: dict[str, Any] = field(default_factory=dict)  # gate thresholds given on the CLI
    ffmpeg: str | None = None
    scorer: str = "auto"  # kit.corpus.vmaf_cli.SCORERS
    fresh: bool = False
    quiet: bool = False
    max_memory: int | None = None  # training memory limit in bytes (None: most of this box's); not a result
    demo_frames: int = demo.DEMO_FRAMES
    demo_size: tuple[int, int] = demo.DEMO_SIZE

    @property
    def demo(self) -> bool:
        return self.ref_dir is None

    def corpus_request(self) -> CorpusRequest:
        return CorpusRequest(ref_dir=self.ref_dir, encoders=self.encoders, cqs=self.cqs, demo_size=self.demo_size,
                             demo_frames=self.demo_frames)


# Options that change results: a rerun that differs in any of these would mix two runs in one directory.
RESULT_KEYS: tuple[str, ...] = ("demo", "ref_sources", "encoders", "cqs", "seeds", "train", "gate", "vmaf_model",
                                "demo_clips", "scorer")
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


def _utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _say(options: PipelineOptions, text: str) -> None:
    if not options.quiet:
        err.print(printable(text), markup=False)


# ---- the run directory: one run, never two mixed -------------------------------------------------------


def _acquire(rd: RunDir) -> HeldLock:
    """One pipeline per run directory at a time: a lock the OS releases even on SIGKILL, naming its holder."""
    got = try_acquire(rd.lock_file, {"what": "ensemble-kit pipeline"})
    if isinstance(got, Holder):
        raise BadInput(f"another ensemble-kit pipeline is running in {rd.root} ({got.describe()})",
                       hint="wait for it to finish, or pick another --out-dir")
    return got


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
    lock = _acquire(RunDir(root))
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
            new_lock = _acquire(RunDir(root))
            lock.release()
            lock = new_lock
            warn(f"--fresh: the previous run in {root} was moved to {aside} (nothing deleted)")
        yield root
    finally:
        lock.release()


def _describe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    for key in RESULT_KEYS:
        a, b = old.get(key), new.get(key)
        if key == "train" and isinstance(a, dict) and isinstance(b, dict):
            a, b = result_train_config(a), result_train_config(b)
        if a != b:
            if key == "ref_sources":
                diffs.append(_source_changes(a or [], b or []))
                continue
            diffs.append(f"{key} {canonical_json(a, indent=None).strip()} -> {canonical_json(b, indent=None).strip()}")
    return diffs


def _source_changes(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str:
    """Reference clips renamed (same content), removed and added (new or changed content), by name."""
    was = {s.get("src_sha256"): s.get("src") for s in old if isinstance(s, dict)}
    now = {s.get("src_sha256"): s.get("src") for s in new if isinstance(s, dict)}
    parts = [f"renamed {was[h]} -> {now[h]} (same content; names are part of the results)"
             for h in sorted(was.keys() & now.keys(), key=str) if was[h] != now[h]]
    gone, came = sorted(str(was[h]) for h in was.keys() - now.keys()), sorted(str(now[h]) for h in now.keys() - was.keys())
    parts += [f"no longer there or changed: {', '.join(gone)}"] if gone else []
    parts += [f"new or changed: {', '.join(came)}"] if came else []
    return "reference clips " + "; ".join(parts or ["differ"])


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
        if old.get("fingerprint_id") != fingerprint_id:  # result_env only: host facts never block a resume
            keys = [k for k, _, _ in env_fingerprint.differences(env_fingerprint.result_env(old.get("fingerprint") or {}),
                                                                 env_fingerprint.result_env(fingerprint))]
            diffs.append(f"result_env {old.get('fingerprint_id')} -> {fingerprint_id}"
                         + (f" ({', '.join(keys[:5])})" if keys else ""))
        if diffs:
            raise BadInput(
                f"{root} holds a run with other settings, and resuming would mix results: {'; '.join(diffs)}",
                hint="rerun with the same options to resume, pass --fresh to move the old run aside, or pick another --out-dir",
            )
        return rd, True
    if root.is_dir():
        # A corpus run (`ensemble-kit corpus`, or a cluster's shards + `corpus assemble`) is adopted: cells
        # are content-addressed and checked, so reusing them cannot mix two runs' results.
        corpus_run = {rd.corpus_dir.name, rd.corpus.name, rd.corpus_jsonl.name} if rd.grid_json.is_file() else set()
        adoptable = {PIPELINE_DIR, *corpus_run}
        foreign = sorted(p.name for p in root.iterdir() if p.name not in adoptable)
        if foreign:
            raise BadInput(f"--out-dir {root} is not empty and holds no pipeline run (found {foreign[0]})",
                           hint="pick an empty or new --out-dir, or pass --fresh to move its contents aside")
    root.mkdir(parents=True, exist_ok=True)
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


# ---- resolving the options -----------------------------------------------------------------------------


@dataclass
class Context:
    """What the steps share within one invocation."""

    options: PipelineOptions
    rd: RunDir
    ff: FFmpeg
    sources: list[Source]
    encoders: list[str]
    cqs: tuple[int, ...]
    config: TrainConfig
    gate: dict[str, Any]
    resolved: dict[str, Any]
    fingerprint: tuple[dict[str, Any], str]  # this run's environment fingerprint and its id
    vmaf_cli: VmafCli | None = None  # None: ffmpeg's libvmaf filter scores
    reports: list[StepReport] = field(default_factory=list)
    verdict: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.rd.root


def check_options(options: PipelineOptions) -> None:
    """Mistakes in what the user typed are bad input (exit 2), found before any probing or work."""
    out = Path(options.out_dir)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out-dir {out} is a file", hint="pass a directory (it is created if missing)")
    options.corpus_request().check()
    TrainConfig().with_overrides(**options.train_overrides)  # out-of-range values name their flag
    unknown = set(options.gate_overrides) - set(GATE_DEFAULTS)
    if unknown:
        raise BadInput(f"unknown gate threshold(s): {', '.join(sorted(unknown))}", hint=f"use {', '.join(GATE_DEFAULTS)}")
    Thresholds(**{**GATE_DEFAULTS, **{k: v for k, v in options.gate_overrides.items() if v is not None}})
    if not options.seeds:
        raise BadInput("--seeds is empty", hint="e.g. --seeds 0,1,2,3,4")
    dask_executor.check(options.executor, options.dask_scheduler)


def check_prereqs(options: PipelineOptions) -> prereqs.PrereqReport:
    """The same PASS/WARN/FAIL table as `ensemble-kit prereqs`; any FAIL stops the run with exit 3."""
    report_ = prereqs.run_prereqs(encoders=list(options.encoders) if options.encoders else None,
                                  out_dir=Path(options.out_dir), ref_dir=options.ref_dir, ffmpeg=options.ffmpeg,
                                  jobs=options.jobs)
    for check in report_.checks:
        if check.status == "WARN":
            warn(f"{check.name}: {check.detail}" + (f" ({check.hint})" if check.hint else ""))
        elif check.status == "FAIL" and not options.quiet:
            err.print(printable(f"FAIL {check.name}: {check.detail}" + (f" ({check.hint})" if check.hint else "")),
                      markup=False)
    prereqs.require(report_)
    return report_


def resolve_run(options: PipelineOptions, prereq_report: prereqs.PrereqReport) -> tuple[
        dict[str, Any], FFmpeg, VmafCli | None, ResolvedCorpus, TrainConfig, dict[str, Any]]:
    """Fill in this box's defaults; everything that decides results ends up in the returned dict."""
    ff = find_ffmpeg(options.ffmpeg)  # PrereqError (exit 3) naming what is missing
    vmaf_cli = choose_scorer(options.scorer)
    corpus = resolve(options.corpus_request(), ff, default_encoders=lambda: prereq_report.encoders)
    train_defaults: dict[str, Any] = dict(demo.DEMO_TRAIN) if options.demo else {}
    config = TrainConfig().with_overrides(**{**train_defaults, **options.train_overrides})
    gate_values = {**GATE_DEFAULTS, **{k: v for k, v in options.gate_overrides.items() if v is not None}}
    if len(corpus.sources) < MIN_SOURCES:  # say so before hours of encoding, not after
        raise BadInput(f"--ref-dir {corpus.ref_dir} holds {len(corpus.sources)} distinct clip(s); leave-one-source-out "
                       f"needs at least {MIN_SOURCES}", hint="add reference clips (different content) to the folder")
    resolved = {
        "demo": options.demo,
        "ref_dir": None if options.demo else str(Path(corpus.ref_dir).resolve()),
        "ref_sources": [{"src": s.src, "src_sha256": s.src_sha256} for s in corpus.sources],
        "demo_clips": corpus.demo_clips,
        "encoders": list(corpus.encoders),
        "cqs": list(corpus.cqs),
        "seeds": list(options.seeds),
        "train": config.to_dict(),
        "gate": gate_values,
        "vmaf_model": DEFAULT_VMAF_MODEL,
        "ffmpeg": {"version": ff.version, "libvmaf_version": ff.libvmaf_version, "origin": ff.origin},
        "scorer": scorer_identity(vmaf_cli, ff.libvmaf_version),
    }
    return resolved, ff, vmaf_cli, corpus, config, gate_values


def resolved_summary(resolved: dict[str, Any]) -> str:
    return (f"encoders {','.join(resolved['encoders'])}; cqs {','.join(map(str, resolved['cqs']))}; "
            f"seeds {','.join(map(str, resolved['seeds']))}; epochs {resolved['train']['epochs']}")


# ---- steps ------------------------------------------------------------------------------------------


def _progress(ctx: Context, label: str, unit: str = "") -> Progress:
    """The shared progress display; the bar clears itself when the step ends."""
    return Progress(label, quiet=ctx.options.quiet, unit=unit, transient=True)


def step_corpus(ctx: Context) -> StepReport:
    key = digest({"step": "corpus", "sources": ctx.resolved["ref_sources"], "encoders": ctx.encoders,
                  "cqs": list(ctx.cqs), "ffmpeg": ctx.resolved["ffmpeg"], "model": ctx.resolved["vmaf_model"],
                  "scorer": ctx.resolved["scorer"]})
    if ctx.rd.step_done("corpus", key):
        return StepReport("corpus", "reused", "corpus.parquet from the earlier run")
    with _progress(ctx, "corpus", "cells") as bar:  # run_corpus kills its tools itself when interrupted
        summary = engine.run_corpus(ctx.rd, ctx.sources, ctx.encoders, ctx.cqs, ff=ctx.ff, jobs=ctx.options.jobs,
                                    vmaf_cli=ctx.vmaf_cli, progress=engine.progress_callback(bar), on_plan=bar.plan,
                                    executor=ctx.options.executor, dask_scheduler=ctx.options.dask_scheduler)
    summary.raise_if_failed(ctx.rd.failures,
                            hint="fix the cause (see `ensemble-kit prereqs`) and rerun the same command: it resumes")
    ctx.rd.mark_done("corpus", key, [ctx.rd.corpus], {"rows": summary.corpus_rows})
    return StepReport("corpus", "done", f"{summary.done} cells encoded + scored, {summary.reused} reused; "
                      f"{summary.corpus_rows} rows from {len(ctx.sources)} sources")


def step_train(ctx: Context) -> StepReport:
    key = digest({"step": "train", "corpus": ctx.rd.outputs_digest("corpus"),
                  "config": result_train_config(ctx.config.to_dict()), "seeds": list(ctx.options.seeds)})
    if ctx.rd.step_done("train", key):
        return StepReport("train", "reused", "LOSO results from the earlier run")
    if ctx.rd.loso_dir.exists() and ctx.rd.marker("train").is_file():
        ctx.rd.move_aside(ctx.rd.loso_dir, "LOSO results of older inputs")
    ctx.rd.clear_marker("train")
    df = load_corpus(ctx.rd.corpus)
    n_models = len(ctx.options.seeds) * df["src_sha256"].nunique()
    with _progress(ctx, f"train {n_models} models", "epochs") as bar:
        bar.plan(ctx.config.epochs)
        result = loso.run_loso(df, ctx.config, ctx.options.seeds, ctx.rd, progress=bar.tick,
                               environment=ctx.fingerprint, max_memory=ctx.options.max_memory)
    ctx.rd.mark_done("train", key, ctx.rd.loso_files(result.seeds))
    means = ", ".join(f"{s}: {v['mean']:.4f}" for s, v in result.per_seed().items())
    return StepReport("train", "done", f"{len(result.seeds)} seeds x {result.folds['fold_src_sha256'].nunique()} "
                      f"folds; mean PLCC per seed {means}")


def step_verdict(ctx: Context) -> StepReport:
    key = digest({"step": "verdict", "loso": ctx.rd.outputs_digest("train"), "gate": ctx.gate})
    if ctx.rd.step_done("verdict", key) is not None:
        ctx.verdict = read_json(ctx.rd.verdict, what="verdict.json")
        return StepReport("verdict", "reused", _verdict_line(ctx.verdict))
    ctx.verdict = gate.write_verdict(ctx.root, **ctx.gate, given_from="the pipeline's options (run.json)")
    ctx.rd.mark_done("verdict", key, ctx.rd.verdict_files(), {"verdict": ctx.verdict["verdict"]})
    return StepReport("verdict", "done", _verdict_line(ctx.verdict))


def _verdict_line(verdict: dict[str, Any]) -> str:
    gate_doc = verdict.get("gate") or {}
    mean, spread = gate_doc.get("mean_plcc"), gate_doc.get("plcc_spread")
    nums = []
    if isinstance(mean, int | float):
        nums.append(f"mean PLCC {mean:.4f}")
    if isinstance(spread, int | float):
        nums.append(f"spread {spread:.4f}")
    return f"{verdict['verdict']}" + (f": {', '.join(nums)}" if nums else "")


def step_export(ctx: Context) -> StepReport:
    if ctx.verdict.get("verdict") != PROMOTE:
        ctx.rd.clear_marker("export")
        if ctx.rd.models_dir.exists():
            ctx.rd.move_aside(ctx.rd.models_dir, "models from an earlier verdict; this run's verdict is HOLD")
        return StepReport("export", "skipped", "HOLD: no models exported")
    key = digest({"step": "export", "verdict": ctx.rd.outputs_digest("verdict"),
                  "corpus": ctx.rd.outputs_digest("corpus")})
    if ctx.rd.step_done("export", key):
        return StepReport("export", "reused", "models from the earlier run")
    if ctx.rd.models_dir.exists():
        ctx.rd.move_aside(ctx.rd.models_dir, "models of older inputs")
    with _progress(ctx, f"export {len(ctx.options.seeds)} models", "epochs") as bar:
        bar.plan(ctx.config.epochs)
        ensemble = export.export_run(ctx.root, progress=bar.tick, max_memory=ctx.options.max_memory)
    outputs = ctx.rd.model_files(ensemble)
    ctx.rd.mark_done("export", key, outputs)
    n_onnx = sum(1 for p in outputs if p.suffix == ".onnx")
    return StepReport("export", "done", f"{n_onnx} ONNX models, onnxruntime parity checked")


def step_report(ctx: Context) -> StepReport:
    key = digest({"step": "report", "verdict": ctx.rd.outputs_digest("verdict"), "loso": ctx.rd.outputs_digest("train"),
                  "corpus": ctx.rd.outputs_digest("corpus")})
    if ctx.rd.step_done("report", key) and ctx.rd.report_inputs.is_file():  # an older kit's report says no verdict
        return StepReport("report", "reused", str(ctx.rd.report_index))
    if ctx.rd.report_dir.exists() and ctx.rd.marker("report").is_file():
        ctx.rd.move_aside(ctx.rd.report_dir, "report of older inputs")
    report.build_report(ctx.root, load_corpus(ctx.rd.corpus, quiet=True))
    ctx.rd.mark_done("report", key, ctx.rd.report_files())
    return StepReport("report", "done", str(ctx.rd.report_index))


def step_bundle(ctx: Context) -> StepReport:
    markers = ctx.rd.marked_steps(("corpus", "train", "verdict", "export", "report"))
    key = digest({"step": "bundle", "inputs": [ctx.rd.outputs_digest(m) for m in markers],
                  "run": sha256_file(ctx.rd.run_json)})
    if (m := ctx.rd.step_done("bundle", key)) is not None:
        rel = next(iter(m["outputs"]))
        return StepReport("bundle", "reused", f"{ctx.root / rel} sha256 {m['outputs'][rel]}")
    result = bundle.make_bundle(ctx.root)
    ctx.rd.mark_done("bundle", key, [result.path], {"sha256": result.sha256})
    return StepReport("bundle", "done", f"{result.path} sha256 {result.sha256}")


STEP_FUNCTIONS: dict[str, Callable[[Context], StepReport]] = {
    "corpus": step_corpus,
    "train": step_train,
    "verdict": step_verdict,
    "export": step_export,
    "report": step_report,
    "bundle": step_bundle,
}


# ---- the run ---------------------------------------------------------------------------------------


def run_pipeline(options: PipelineOptions) -> PipelineResult:
    """The whole job. Raises KitError subclasses for the documented exit codes; returns PROMOTE/HOLD."""
    t0 = time.perf_counter()
    n = len(STEPS)
    with proc.sigterm_as_interrupt():
        check_options(options)
        prereq_report = check_prereqs(options)
        resolved, ff, vmaf_cli, corpus, config, gate_values = resolve_run(options, prereq_report)
        fp, fp_id = env_fingerprint.current(ff, scorer=scorer_fingerprint(vmaf_cli, ff.libvmaf_version))
        with locked_run_dir(options):
            rd, resumed = prepare_run_dir(options, resolved, fp, fp_id)
            rd.sweep_temp()  # what a SIGKILLed earlier attempt left half-written
            append_line(rd.log_file, canonical_json(
                {"utc": _utc(), "event": "resume" if resumed else "start", "jobs": options.jobs, "pid": os.getpid()},
                indent=None))
            where = "demo clips" if options.demo else f"{len(corpus.sources)} clips from {options.ref_dir}"
            _say(options, f"ensemble-kit pipeline -> {rd.root} ({where}; {resolved_summary(resolved)})"
                 + (" [resuming]" if resumed else ""))
            scorer = vmaf_cli.describe() if vmaf_cli else f"ffmpeg's libvmaf {ff.libvmaf_version}"
            _say(options, f"[1/{n}] prereqs  ok: ffmpeg {ff.version} ({ff.origin}), scored by {scorer}; "
                 f"encoders {', '.join(corpus.encoders)}; environment {fp_id}")
            ctx = Context(options=options, rd=rd, ff=ff, sources=corpus.sources, encoders=list(corpus.encoders),
                          cqs=corpus.cqs, config=config, gate=gate_values, resolved=resolved,
                          fingerprint=(fp, fp_id), vmaf_cli=vmaf_cli)
            ctx.reports.append(StepReport("prereqs", "done"))
            for i, name in enumerate(STEPS[1:], start=2):
                started = time.perf_counter()
                step = STEP_FUNCTIONS[name](ctx)
                step.seconds = time.perf_counter() - started
                ctx.reports.append(step)
                tag = {"reused": " (done earlier)", "skipped": " (skipped)"}.get(step.status, "")
                _say(options, f"[{i}/{n}] {name:<8} {step.detail}{tag} [{step.seconds:.1f} s]")
            bundle_marker = rd.read_marker("bundle")
            bundle_rel = next(iter(bundle_marker["outputs"]))
            return PipelineResult(run_dir=rd.root, verdict=ctx.verdict["verdict"], bundle=rd.root / bundle_rel,
                                  bundle_sha256=bundle_marker["outputs"][bundle_rel], steps=ctx.reports,
                                  recommendation=str(ctx.verdict.get("recommendation") or ""),
                                  wall_s=time.perf_counter() - t0)
