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
from kit.core.fsio import writable_dir
from kit.core.rundir import RunDir
from kit.env import fingerprint as env_fingerprint
from kit.results import bundle
from kit.train.config import TrainConfig, parse_seeds


@click.command("train", epilog=EPILOG_EXIT_CODES)
@click.option("--corpus", "corpus_path", type=click.Path(path_type=Path),
              help="corpus.parquet, run directory, results bundle (.tar.gz) or per-frame .jsonl (ours, the fork's, the "
                   "old kit's) [default: OUT_DIR/corpus.parquet].")
@drop_invalid_option()
@out_dir_option()
@click.option("--seeds", default="0,1,2,3,4", show_default=True, help="Seeds to train (authoritative): 0,1,2 or 0-4.")
@train_config_options()
@max_memory_option()
@quiet_option()
@json_option("Print per-seed results as JSON on stdout.")
def train_cmd(corpus_path: Path | None, drop_invalid: bool, out_dir: Path, seeds: str, max_memory: int | None,
              quiet: bool, as_json: bool, **overrides: Any) -> None:
    """Leave-one-source-out training of seeds x folds (all models in one batched computation), with the
    fork's recipe by default (codec vocab v2, crf_norm over the corpus cq range, fold-local scaler).

    Writes OUT_DIR/loso/ (folds.csv, seed<N>/predictions.parquet, summary.json, and the fork's
    loso_seed<N>.json); byte-identical on every run of the same corpus in the same environment, except
    the measured wall_time_s in loso_seed<N>.json.

    \b
    Examples:
      ensemble-kit train --out-dir runs/demo
      ensemble-kit train --corpus old_kit_corpus.jsonl --out-dir runs/imported --epochs 100
    """
    # heavy (torch, pandas): imported when the command runs, so `ensemble-kit --help` stays fast
    from kit.corpus.legacy import InvalidRows
    from kit.train import loso
    from kit.train.data import adopt_corpus, load_corpus

    config = TrainConfig().with_overrides(**train_overrides(overrides))
    seed_list = parse_seeds(seeds)
    rd = RunDir(writable_dir(out_dir))
    rd.sweep_temp()
    # a results bundle is verified and safely extracted first
    invalid = InvalidRows()
    df = load_corpus(bundle.corpus_from(corpus_path) if corpus_path else rd.corpus, drop_invalid=drop_invalid,
                     invalid=invalid)
    if corpus_path is not None:
        adopt_corpus(df, rd.corpus)
    with Progress("train", quiet=quiet, unit="epochs") as bar:
        result = loso.run_loso(df, config, seed_list, rd, progress=bar.tick, environment=env_fingerprint.current(),
                               corpus_notes=invalid.to_dict() if invalid.count else None, max_memory=max_memory)
    per_seed = result.per_seed()
    emit({str(s): v for s, v in per_seed.items()}, as_json,
         text=[f"seed {seed}: mean PLCC {v['mean']:.4f} (min {v['min']:.4f}, max {v['max']:.4f}, "
               f"{v['n']} folds{', ' + str(v['n_nan']) + ' NaN' if v['n_nan'] else ''})" for seed, v in per_seed.items()])
    if not as_json:
        note(f"LOSO results in {rd.loso_dir}; next: ensemble-kit verdict --out-dir {out_dir}")


COMMANDS = (train_cmd,)
