"""`verdict`, `export`, `predict`, `report`, `bundle`, `verify`, `compare`: from LOSO results to the mailed tarball."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kit.cli.options import (
    EPILOG_EXIT_CODES,
    gate_given,
    gate_options,
    json_option,
    max_memory_option,
    out_dir_option,
    quiet_option,
)
from kit.cli.output import emit, note
from kit.core.console import Progress
from kit.core.errors import ExitCode
from kit.core.fsio import out_target
from kit.core.rundir import RunDir
from kit.results import bundle
from kit.results.thresholds import PROMOTE


@click.command("verdict", epilog=EPILOG_EXIT_CODES)
@out_dir_option()
@gate_options(with_short_flags=True)
@json_option("Print verdict.json on stdout.")
def verdict_cmd(out_dir: Path, mean_plcc: float, plcc_spread_max: float, per_seed_min: float, as_json: bool) -> None:
    """Apply the PROMOTE/HOLD gate to OUT_DIR/loso/ and write OUT_DIR/verdict.json (the one verdict file).

    A run trained with `train --corpus RUN|BUNDLE` carries that run's thresholds (loso/summary.json):
    they are used unless a flag is given; verdict.json records each value and where it came from.

    Exit 0 on PROMOTE, 1 on HOLD (not an error), 2 when there are no LOSO results.

    \b
    Example:
      ensemble-kit verdict --out-dir runs/demo --spread-max 0.01
    """
    from kit.results import gate  # heavy (pandas): imported when the command runs

    RunDir(out_dir).sweep_temp()
    given = gate_given(click.get_current_context(), mean_plcc=mean_plcc, plcc_spread_max=plcc_spread_max,
                       per_seed_min=per_seed_min)
    doc = gate.write_verdict(out_dir, **given)
    carried = sorted({where for where in doc.get(gate.THRESHOLDS_FROM_KEY, {}).values()} - {"command line", "default"})
    if carried and not as_json:
        note(f"gate thresholds from {', '.join(carried)} (carried from the run trained on); flags override them")
    emit(doc, as_json, text=doc["recommendation"])
    sys.exit(int(ExitCode.OK if doc["verdict"] == PROMOTE else ExitCode.HOLD))


@click.command("export", epilog=EPILOG_EXIT_CODES)
@out_dir_option()
@click.option("--force", is_flag=True, help="Export even when the verdict is HOLD (the members then get non-production "
              "ids, smoke=true registry rows, and the sidecars record the verdict).")
@click.option("--corpus", "corpus_path", type=click.Path(path_type=Path),
              help="The corpus the verdict was computed on [default: OUT_DIR/corpus.parquet].")
@click.option("--name", default=None, help="Ensemble id: members NAME_seed<N>.onnx [default: fr_regressor_v2_ensemble_v1, "
              "the production id, on a PROMOTE in vocab v2; otherwise a name that says why not].")
@click.option("--external-data", is_flag=True, help="Write each member as the fork ships them: NAME_seed<N>.onnx + "
              ".onnx.data (both hashed in ensemble.json) [default: one self-contained .onnx].")
@max_memory_option()
@quiet_option()
def export_cmd(out_dir: Path, force: bool, corpus_path: Path | None, name: str | None, external_data: bool,
               max_memory: int | None, quiet: bool) -> None:
    """Fit each seed on the whole corpus and write fork-ready members to OUT_DIR/models/.

    Only on PROMOTE (or --force). Per member: the .onnx (inputs features [N,6], standardised by the caller,
    and codec_onehot [N,14]; output score), its sidecar with every key the fork's production sidecars have,
    and its row in registry.rows.json; then ensemble.json. Each model is checked with onnx.checker and
    against PyTorch with onnxruntime on every corpus row (within 1e-4, else exit 4).

    \b
    Example:
      ensemble-kit export --out-dir runs/demo
      ensemble-kit export --out-dir runs/demo --external-data   # .onnx + .onnx.data, like model/tiny/
    """
    from kit.results import export  # heavy (torch, onnx): imported when the command runs

    RunDir(out_dir).sweep_temp()
    with Progress("export", quiet=quiet, unit="epochs") as bar:
        ensemble = export.export_run(out_dir, force=force, corpus=corpus_path, name=name, external_data=external_data,
                                     progress=bar.tick, max_memory=max_memory)
    emit(ensemble, text=[f"{RunDir(out_dir).models_dir / m['onnx']}  sha256 {m['sha256']}" for m in ensemble["members"]])


@click.command("predict", epilog=EPILOG_EXIT_CODES)
@click.option("--models", "models_dir", type=click.Path(path_type=Path), required=True,
              help="Folder of fr_regressor_v2 members: ours (with ensemble.json, e.g. runs/demo/models) or the "
                   "fork's (each <id>.onnx with its <id>.json sidecar, and .onnx.data if any).")
@click.argument("corpus_path", metavar="CORPUS", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(), default="predictions.parquet", show_default=True,
              help="Where to write per-row predictions (.parquet or .csv; a folder gets predictions.parquet).")
def predict_cmd(models_dir: Path, corpus_path: Path, output: str) -> None:
    """Score every row of CORPUS with the ensemble (onnxruntime): mean, std (ddof=1), 95% interval.

    Each member gets what the fork feeds it: features standardised with its sidecar's feature_mean/std,
    and the codec block of its sidecar's vocabulary and cq range. Warns about encoders the members
    never saw and predictions outside [0, 100].

    \b
    Example:
      ensemble-kit predict --models runs/demo/models runs/other/corpus.parquet -o other.csv
      ensemble-kit predict --models vmaf/model/tiny corpus.jsonl -o fork.csv
    """
    # heavy (onnxruntime, pandas): imported when the command runs
    from kit.results import predict
    from kit.train.data import load_corpus

    df = predict.predict_ensemble(models_dir, load_corpus(corpus_path))
    target = out_target(output, "predictions.parquet")
    predict.write_predictions(df, target)
    note(f"{len(df)} rows -> {target}")


@click.command("report", epilog=EPILOG_EXIT_CODES)
@out_dir_option()
@click.option("--corpus", "corpus_path", type=click.Path(path_type=Path),
              help="Corpus for the rate-quality plot [default: OUT_DIR/corpus.parquet].")
def report_cmd(out_dir: Path, corpus_path: Path | None) -> None:
    """Write OUT_DIR/report/index.html with per-fold PLCC, predicted-vs-actual and rate-quality plots.

    \b
    Example:
      ensemble-kit report --out-dir runs/demo
    """
    # heavy (matplotlib, pandas): imported when the command runs
    from kit.results import report
    from kit.train.data import load_corpus

    RunDir(out_dir).sweep_temp()
    path = report.build_report(out_dir, load_corpus(corpus_path) if corpus_path else None)
    note(f"report: {path}")


@click.command("bundle", epilog=EPILOG_EXIT_CODES)
@click.argument("run_dir", type=click.Path(path_type=Path), default=Path("runs/demo"))
@click.option("--out", "out", type=click.Path(), default=None,
              help="Where to write the tarball: a file, or a folder (an existing one, or a path ending in /); "
                   "default: inside RUN_DIR.")
def bundle_cmd(run_dir: Path, out: str | None) -> None:
    """Pack this run's results into ensemble-results-<platform>-<box>-<utc>.tar.gz.

    Only files this run wrote go in, hashed in manifest.json; the same run always gives the same bytes.

    \b
    Example:
      ensemble-kit bundle runs/demo
    """
    RunDir(run_dir).sweep_temp()
    result = bundle.make_bundle(run_dir, out)
    note(f"bundle: {len(result.manifest['files'])} files, verdict {result.manifest['verdict']['verdict']}")
    note(f"sha256: {result.sha256}")
    emit(str(result.path), text=str(result.path))


@click.command("verify", epilog=EPILOG_EXIT_CODES)
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--max-bytes", type=click.IntRange(min=1), default=None,
              help="Refuse bundles whose content exceeds this many bytes (default 8 GiB).")
@json_option("Print the manifest, the checks that passed and the bundle's sha256 as JSON.")
def verify_cmd(bundle_path: Path, max_bytes: int | None, as_json: bool) -> None:
    """Check a returned bundle as untrusted input, and re-derive every claim it makes from its own files.

    Safe, bounded extraction (the manifest first, then only the files it lists, each hashed); then the
    verdict re-derived from the folds and thresholds, members' sha256 against ensemble.json and the
    sidecars, the models' and the verdict's corpus hash against the bundled corpus, and the training
    config and thresholds against run.json. Hashes detect changes after bundling; they are not a
    signature: anyone can build a consistent bundle, so trust comes from the sender.

    \b
    Example:
      ensemble-kit verify ensemble-results-linux-cuda-x86_64-3f9c0a1b2c4d-20261125T101500Z.tar.gz
    """
    result = bundle.verify(bundle_path, max_total_bytes=max_bytes or bundle.DEFAULT_MAX_BUNDLE_BYTES)
    m = result.manifest
    gate = m.get("verdict") if isinstance(m.get("verdict"), dict) else {}
    emit({"bundle": str(bundle_path), "sha256": result.sha256, "checks": list(result.checks), "manifest": m,
          "note": bundle.NOT_A_SIGNATURE},
         as_json, text=[f"OK {bundle_path}: {result.n_files} files, {result.total_bytes} bytes, verdict "
                        f"{gate.get('verdict')}, platform {m.get('platform')}, box {m.get('box_id')}, kit {m.get('kit_version')}",
                        f"sha256 {result.sha256}",
                        f"re-derived: {', '.join(result.checks)}",
                        f"note: {bundle.NOT_A_SIGNATURE}"])


@click.command("compare", epilog=EPILOG_EXIT_CODES)
@click.argument("lead", type=click.Path(path_type=Path))
@click.argument("collab", type=click.Path(path_type=Path))
@click.option("--plcc-tol", type=float, default=0.0, show_default=True,
              help="Largest |PLCC difference| per seed and per fold still counted as reproduced (0 = exact; run vs run only).")
@json_option("Print the comparison as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="List every fold's PLCC.")
def compare_cmd(lead: Path, collab: Path, plcc_tol: float, as_json: bool, verbose: bool) -> None:
    """Does COLLAB reproduce LEAD, or confirm the lead's fork verdict?

    LEAD is a run directory or bundle (exit 0 REPRODUCED, 1 DIVERGED: verdicts, per-seed and per-fold
    PLCCs, sources, environments), or the VMAF fork's PROMOTE.json / HOLD.json, or a folder holding one
    (e.g. the fork's model/tiny/ with the members' sidecars): then exit 0 CONFIRMS, 1 REFUTES, with the
    reasons first and both gates' numbers side by side.

    \b
    Examples:
      ensemble-kit compare runs/lead ensemble-results-linux-cpu-x86_64-ab12cd34ef56-20261125T101500Z.tar.gz
      ensemble-kit compare lead.tar.gz collab.tar.gz --plcc-tol 0.005   # different hardware
      ensemble-kit compare vmaf/model/tiny runs/mybox                     # confirm the lead's fork verdict
    """
    # heavy (pandas): imported when the command runs
    from kit.results import compare, confirm

    fork_lead = confirm.fork_verdict_file(lead)
    if fork_lead is not None:
        result = confirm.confirm(fork_lead, collab)
        emit(result.to_dict(), as_json, text=confirm.confirmation_lines(result))
        if not result.confirmed:
            sys.exit(int(ExitCode.HOLD))
        return
    cmp = compare.compare(lead, collab, plcc_tol=plcc_tol)
    emit(cmp.to_dict(), as_json, text=compare.comparison_lines(cmp, verbose=verbose))
    if not cmp.reproduced:
        sys.exit(int(ExitCode.HOLD))


COMMANDS = (verdict_cmd, export_cmd, predict_cmd, report_cmd, bundle_cmd, verify_cmd, compare_cmd)
