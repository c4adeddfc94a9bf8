"""report/index.html: the verdict at a glance, with plots a reviewer would rather look at than read.

Plots (PNG, matplotlib's Agg backend, no display needed):
  fold_plcc.png       per-fold PLCC per seed, with the gate threshold
  pred_vs_actual.png  held-out predictions (mean over seeds) vs measured VMAF, one panel per source
  rate_quality.png    bitrate vs mean VMAF per encoder, one panel per source (from the corpus)
"""

from __future__ import annotations

import functools
import html
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kit.core.console import printable  # noqa: E402
from kit.core.errors import BadInput  # noqa: E402
from kit.core.fsio import read_json, write_text, write_with  # noqa: E402
from kit.core.ids import shorten  # noqa: E402
from kit.core.rundir import REPORT_IMAGES, RunDir  # noqa: E402
from kit.corpus.table import corpus_sha256  # noqa: E402
from kit.results import provenance  # noqa: E402
from kit.results.thresholds import HOLD, PROMOTE, Thresholds  # noqa: E402
from kit.train.data import canonical_order, load_corpus, normalise  # noqa: E402
from kit.train.loso_files import load_loso  # noqa: E402

PNG_META = {"Software": None}  # no matplotlib version stamp: same data -> same image bytes


Plot = TypeVar("Plot", bound=Callable[..., None])


def _names_as_plain_text(plot: Plot) -> Plot:
    """Source and encoder names are the user's file names: drawn as plain text, never as matplotlib
    mathtext (two '$' in a name made savefig raise a ParseException), and a glyph the font lacks (CJK,
    a control character) is a box in the image, not a UserWarning on stderr that carries the raw
    character to the terminal. Labels go through `printable`, so a control character shows as an escape."""
    @functools.wraps(plot)
    def draw(*args: Any, **kwargs: Any) -> None:
        with plt.rc_context({"text.parse_math": False}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
            plot(*args, **kwargs)
    return draw  # type: ignore[return-value]


def _save(fig: plt.Figure, path: Path) -> None:
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, metadata=PNG_META, bbox_inches="tight"))
    plt.close(fig)


def _grid(n: int) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(3, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


@_names_as_plain_text
def plot_fold_plcc(folds: pd.DataFrame, threshold: float, path: Path) -> None:
    sources = sorted(folds["fold_src"].astype(str).unique())
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(sources) + 2), 4))
    x = np.arange(len(sources))
    seeds = sorted(folds["seed"].unique())
    for k, seed in enumerate(seeds):  # dots side by side per source: folds are categories, not a series
        part = folds[folds["seed"] == seed].set_index("fold_src")["plcc"]
        dx = (k - (len(seeds) - 1) / 2) * min(0.12, 0.6 / max(1, len(seeds)))
        ax.plot(x + dx, [part.get(s, np.nan) for s in sources], marker="o", linestyle="", alpha=0.85, label=f"seed {seed}")
    ax.axhline(threshold, color="crimson", linestyle="--", linewidth=1, label=f"threshold {threshold}")
    ax.set_xticks(x, [printable(s) for s in sources], rotation=30, ha="right")
    ax.set_ylabel("PLCC (held-out source, per frame)")
    ax.set_title("LOSO: per-fold PLCC per seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    _save(fig, path)


@_names_as_plain_text
def plot_pred_vs_actual(predictions: pd.DataFrame, path: Path) -> None:
    mean = predictions.groupby(["src", "encoder", "cq", "frame_index"], sort=True)[["pred", "vmaf"]].mean().reset_index()
    sources = sorted(mean["src"].astype(str).unique())
    fig, axes = _grid(len(sources))
    for ax, src in zip(axes, sources, strict=True):
        part = mean[mean["src"] == src]
        for enc in sorted(part["encoder"].unique()):
            e = part[part["encoder"] == enc]
            ax.scatter(e["vmaf"], e["pred"], s=6, alpha=0.6, label=printable(enc))
        lo = float(min(part["vmaf"].min(), part["pred"].min()))
        hi = float(max(part["vmaf"].max(), part["pred"].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
        ax.set_title(printable(src), fontsize=9)
        ax.set_xlabel("measured VMAF")
        ax.set_ylabel("predicted (held out)")
        ax.legend(fontsize=7)
    fig.suptitle("Predicted vs measured VMAF, each source held out")
    _save(fig, path)


@_names_as_plain_text
def plot_rate_quality(corpus: pd.DataFrame, path: Path) -> None:
    rate_col = "bitrate_kbps" if "bitrate_kbps" in corpus.columns and corpus["bitrate_kbps"].notna().any() else "enc_bytes"
    cells = corpus.groupby(["src", "encoder", "cq"], sort=True).agg(rate=(rate_col, "first"), vmaf=("vmaf", "mean")).reset_index()
    sources = sorted(cells["src"].astype(str).unique())
    fig, axes = _grid(len(sources))
    for ax, src in zip(axes, sources, strict=True):
        part = cells[cells["src"] == src]
        for enc in sorted(part["encoder"].unique()):
            e = part[part["encoder"] == enc].sort_values("rate")
            ax.plot(e["rate"], e["vmaf"], marker="o", label=printable(enc))
        ax.set_xscale("log")
        # Plain numbers on the log axis; minor labels like "3x10^1" collide on narrow ranges.
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(printable(src), fontsize=9)
        ax.set_xlabel("bitrate (kbit/s)" if rate_col == "bitrate_kbps" else "encoded bytes")
        ax.set_ylabel("mean VMAF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Rate-quality per encoder per source")
    _save(fig, path)


# Measured correlations and errors read best at 4 decimals; every other number (a learning rate, Adam's
# eps, a threshold, an epoch count) is shown as what it is: 1e-08, not 0.0000; 100, not 100.0000.
METRIC_FIELDS = frozenset({"plcc", "srocc", "krocc", "rmse", "encode_plcc", "encode_srocc", "mean_plcc", "plcc_spread"})


def format_value(value: Any, field: str = "") -> str:
    """One table cell: integers as integers, metrics to 4 decimals, other numbers in their shortest exact-enough form."""
    if isinstance(value, bool | str) or value is None:
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return "NaN" if math.isnan(v) else str(v)
        if v.is_integer() and field not in METRIC_FIELDS:
            return str(int(v))
        return f"{v:.4f}" if field in METRIC_FIELDS else f"{v:.6g}"
    return str(value)


def _table(df: pd.DataFrame, *, name_column: str | None = None) -> str:
    """An HTML table; each cell formatted for its column (or, with `name_column`, for the row's name)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.to_dict("records"):
        cells = "".join(f"<td>{html.escape(format_value(v, str(row[name_column]) if name_column else str(c)))}</td>"
                        for c, v in row.items())
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def build_report(run_dir: str | Path, corpus_df: pd.DataFrame | None = None) -> Path:
    """Write run_dir/report/index.html and its PNGs from loso/, verdict.json and the corpus.

    A picture this report does not draw (no predictions, no corpus) is removed if an earlier report
    left one, so report/ holds exactly this report (`RunDir.report_files`); report/inputs.json says which
    verdict it shows. Refused (bad input) when the verdict, loso/ and the corpus do not belong together
    (kit.results.provenance), so a report never shows one run's verdict over another run's data.
    """
    rd = RunDir(Path(run_dir))
    loso = load_loso(rd, with_predictions=True)
    provenance.check(rd, models=False, report=False)
    verdict: dict[str, Any] = read_json(rd.verdict, what="verdict.json") if rd.verdict.is_file() else {}
    if corpus_df is None and rd.corpus.is_file():
        corpus_df = load_corpus(rd.corpus, quiet=True)
    elif corpus_df is not None and (trained_on := loso.corpus.get("sha256")):
        given = corpus_sha256(canonical_order(normalise(corpus_df)))
        if given != trained_on:
            raise BadInput(f"the corpus given for the report ({shorten(given)}, {len(corpus_df)} rows) is not the one "
                           f"{rd.loso_dir} was trained on ({shorten(trained_on)}, {loso.corpus.get('n_rows')} rows)",
                           hint="pass the corpus the run was trained on, or leave --corpus out")
    out = rd.report_dir
    out.mkdir(parents=True, exist_ok=True)
    threshold = float(verdict.get("gate", {}).get("per_seed_min", Thresholds().per_seed_min))
    images = [("fold_plcc.png", "Per-fold PLCC per seed")]
    plot_fold_plcc(loso.folds, threshold, rd.report_image("fold_plcc.png"))
    if len(loso.predictions):
        plot_pred_vs_actual(loso.predictions, rd.report_image("pred_vs_actual.png"))
        images.append(("pred_vs_actual.png", "Predicted vs measured VMAF per held-out source"))
    notes = []
    if corpus_df is not None and len(corpus_df):
        plot_rate_quality(corpus_df, rd.report_image("rate_quality.png"))
        images.append(("rate_quality.png", "Rate-quality curves per encoder per source"))
    else:
        notes.append(f"No corpus at {rd.corpus}: rate-quality plot left out (pass --corpus PATH).")
    drawn = {name for name, _ in images}
    for stale in (rd.report_image(n) for n in REPORT_IMAGES if n not in drawn):
        stale.unlink(missing_ok=True)
    gate = verdict.get("gate", {})
    name = verdict.get("verdict", "no verdict yet")
    colour = {PROMOTE: "#1a7f37", HOLD: "#b35900"}.get(name, "#555")
    gate_rows = pd.DataFrame(
        [(k, gate[k]) for k in ("mean_plcc", "mean_plcc_threshold", "plcc_spread", "plcc_spread_max", "per_seed_min",
                                "failing_seeds") if k in gate], columns=["gate", "value"], dtype=object)
    fold_cols = [c for c in ("seed", "fold_src", "plcc", "srocc", "krocc", "rmse", "encode_plcc", "encode_srocc", "n_frames")
                 if c in loso.folds.columns]
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ensemble-kit report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1300px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}} .verdict{{font-size:2em;color:{colour}}}
img{{max-width:100%;border:1px solid #eee;margin:0.5em 0}}</style></head><body>
<h1>ensemble-kit report</h1>
<p class="verdict"><b>{html.escape(str(name))}</b></p>
<p>{html.escape(str(verdict.get("recommendation", "")))}</p>
{"".join(f"<p><i>{html.escape(n)}</i></p>" for n in notes)}
<p>Corpus sha256 <code>{html.escape(str(loso.corpus.get("sha256", "")))}</code>: {loso.corpus.get("n_rows")} rows,
{loso.corpus.get("n_sources")} sources, {loso.corpus.get("n_encoders")} encoders; seeds {", ".join(map(str, loso.seeds))};
environment <code>{html.escape(loso.fingerprint_id)}</code>.</p>
{_table(gate_rows, name_column="gate") if len(gate_rows) else ""}
{"".join(f'<h2>{html.escape(t)}</h2><img src="{f}" alt="{html.escape(t)}">' for f, t in images)}
<h2>Per-fold metrics</h2>
{_table(loso.folds[fold_cols])}
<h2>Training config</h2>
{_table(pd.DataFrame(sorted(loso.config.to_dict().items()), columns=["field", "value"], dtype=object), name_column="field")}
</body></html>
"""
    write_text(rd.report_index, body)
    provenance.write_report_inputs(rd, verdict)
    return rd.report_index
