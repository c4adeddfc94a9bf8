"""`ensemble-kit train`: leave-one-source-out training of seeds x folds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kit.cli.options import (
    EPILOG_EXIT_CODES,
    drop_invalid_option,
    json_option,
    max_memory_option,
    out_dir_option,
    quiet_option,
    train_config_options,
    train_overrides,
)
from kit.cli.output import emit, note
from kit.core.console import Progress
from kit.core.errors import BadInput
from kit.core.fsio import writable_dir
from kit.core.rundir import RunDir
from kit.env import fingerprint as env_fingerprint
from kit.results import bundle
from kit.train.config import DEFAULT_SEEDS, TrainConfig, flag_of, parse_seeds, result_train_config


@click.command("train", epilog=EPILOG_EXIT_CODES)
@click.option("--corpus", "corpus_path", type=click.Path(path_type=Path),
              help="corpus.parquet, run directory, results bundle (.tar.gz) or per-frame .jsonl (ours, the fork's, the "
                   "old kit's) [default: OUT_DIR/corpus.parquet].")
@drop_invalid_option()
@out_dir_option()
@click.option("--seeds", default=None, help="Seeds to train (authoritative): 0,1,2 or 0-4 [default: the seeds a --corpus "
                                          "run or bundle recorded, else 0,1,2,3,4].")
@train_config_options()
@max_memory_option()
@quiet_option()
@json_option("Print per-seed results as JSON on stdout.")
def train_cmd(corpus_path: Path | None, drop_invalid: bool, out_dir: Path, seeds: str | None, max_memory: int | None,
              quiet: bool, as_json: bool, **overrides: Any) -> None:
    """Leave-one-source-out training of seeds x folds (all models in one batched computation), with the
    fork's recipe by default (codec vocab v2, crf_norm over the corpus cq range, fold-local scaler).

    Writes OUT_DIR/loso/ (folds.csv, seed<N>/predictions.parquet, summary.json, and the fork's
    loso_seed<N>.json); byte-identical on every run of the same corpus in the same environment, except
    the measured wall_time_s in loso_seed<N>.json.

    A --corpus run directory or results bundle also brings the training config and seeds it recorded:
    they are used unless a flag says otherwise (and the command says which), so retraining a
    collaborator's bundle repeats their training. Its gate thresholds are recorded in
    loso/summary.json, so a later `verdict` decides with them unless its flags say otherwise.

    \b
    Examples:
      ensemble-kit train --out-dir runs/demo
      ensemble-kit train --corpus ensemble-results-….tar.gz --out-dir runs/check      # their config and seeds
      ensemble-kit train --corpus old_kit_corpus.jsonl --out-dir runs/imported --epochs 100
    """
    # heavy (torch, pandas): imported when the command runs, so `ensemble-kit --help` stays fast
    from kit.corpus.legacy import InvalidRows
    from kit.train import loso
    from kit.train.data import adopt_corpus, load_corpus

    given = train_overrides(overrides)
    TrainConfig().with_overrides(**given)  # a typed flag out of range is named before a bundle is opened
    rd = RunDir(writable_dir(out_dir))
    rd.sweep_temp()
    # a results bundle is verified and safely extracted first
    corpus_file, recorded = bundle.training_source(corpus_path) if corpus_path else (rd.corpus, None)
    config, seed_list = training_plan(recorded, given, seeds, str(corpus_path))
    invalid = InvalidRows()
    df = load_corpus(corpus_file, drop_invalid=drop_invalid, invalid=invalid)
    if corpus_path is not None:
        adopt_corpus(df, rd.corpus)
    with Progress("train", quiet=quiet, unit="epochs") as bar:
        result = loso.run_loso(df, config, seed_list, rd, progress=bar.tick, environment=env_fingerprint.current(),
                               corpus_notes=invalid.to_dict() if invalid.count else None, max_memory=max_memory,
                               gate_thresholds=recorded.gate if recorded else None)
    per_seed = result.per_seed()
    emit({str(s): v for s, v in per_seed.items()}, as_json,
         text=[f"seed {seed}: mean PLCC {v['mean']:.4f} (min {v['min']:.4f}, max {v['max']:.4f}, "
               f"{v['n']} folds{', ' + str(v['n_nan']) + ' NaN' if v['n_nan'] else ''})" for seed, v in per_seed.items()])
    if not as_json:
        note(f"LOSO results in {rd.loso_dir}; next: ensemble-kit verdict --out-dir {out_dir}")


def training_plan(recorded: bundle.RecordedTraining | None, given: dict[str, Any], seeds: str | None,
                  source: str) -> tuple[TrainConfig, tuple[int, ...]]:
    """The config and seeds to train with: flags first, then what the --corpus run recorded, then the
    defaults. Says on stderr what came from where (result-neutral settings such as --workers stay local)."""
    if recorded is None:
        return TrainConfig().with_overrides(**given), parse_seeds(seeds or ",".join(map(str, DEFAULT_SEEDS)))
    adopted = {k: v for k, v in result_train_config(recorded.config).items() if k in TrainConfig.__dataclass_fields__}
    try:
        config = TrainConfig.from_dict(adopted).with_overrides(**given)
    except (TypeError, ValueError):  # a hand-edited run directory (a bundle's config was checked when it was opened)
        raise BadInput(f"{source}: {recorded.where} records a training config that is not one "
                       f"({', '.join(f'{k}={v!r}' for k, v in sorted(adopted.items()))})",
                       hint="pass the training flags yourself, or a corpus.parquet instead of the run") from None
    seed_list = parse_seeds(seeds) if seeds else tuple(sorted(set(recorded.seeds)))
    shown = ", ".join(f"{k} {v}" for k, v in sorted(adopted.items()) if k not in given)
    note(f"training config from {source} ({recorded.where}): {shown or 'none left'}"
         + ("" if seeds else f"; seeds {','.join(map(str, seed_list))}"))
    if recorded.gate is not None:
        note(f"gate thresholds from {source}: {', '.join(f'{k} {v}' for k, v in recorded.gate.items())}; recorded in "
             "loso/summary.json for `ensemble-kit verdict` (its flags override them)")
    overridden = [flag_of(k) for k in sorted(given)] + (["--seeds"] if seeds else [])
    if overridden:
        note(f"overridden by the command line: {', '.join(overridden)}")
    return config, seed_list


COMMANDS = (train_cmd,)
