"""Report: index.html with the three plots, from a real (tiny) LOSO run."""

from __future__ import annotations

from kit.results.gate import write_verdict
from kit.results.report import build_report
from kit.train.config import TrainConfig
from kit.train.loso import run_loso
from kit.train.synthetic import synthetic_corpus


def test_report_has_plots_and_verdict(tmp_path):
    corpus = synthetic_corpus(n_sources=3, frames=5, encoders=("libx264", "libsvtav1"), cqs=(20, 40))
    run_loso(corpus, TrainConfig(epochs=2, hidden=8), (0, 1), tmp_path)
    doc = write_verdict(tmp_path)
    index = build_report(tmp_path, corpus)
    html = index.read_text()
    assert doc["verdict"] in html and doc["recommendation"].split(":")[0] in html
    for png in ("fold_plcc.png", "pred_vs_actual.png", "rate_quality.png"):
        data = (tmp_path / "report" / png).read_bytes()
        assert data.startswith(b"\x89PNG") and f'src="{png}"' in html
    assert "synthetic_00.y4m" in html  # the per-fold table names the held-out sources
    # the config table shows each field as what it is (issue 11): not "2.0000" epochs or "0.0000" eps
    assert "<td>epochs</td><td>2</td>" in html and "<td>eps</td><td>1e-08</td>" in html


def test_source_names_are_drawn_as_plain_text_without_warnings(tmp_path, recwarn):
    """File names are the user's: two '$' made matplotlib parse mathtext and savefig raise; a CJK or control
    character made a 'Glyph missing' UserWarning that printed the raw character to the terminal."""
    corpus = synthetic_corpus(n_sources=3, frames=5, encoders=("libx264",), cqs=(20, 40))
    names = {"synthetic_00.y4m": "cost_$x^$_clip", "synthetic_01.y4m": "日本\x1b[31m", "synthetic_02.y4m": "plain"}
    corpus["src"] = corpus["src"].map(names)
    run_loso(corpus, TrainConfig(epochs=2, hidden=8), (0,), tmp_path)
    write_verdict(tmp_path)
    build_report(tmp_path, corpus)
    for png in ("fold_plcc.png", "pred_vs_actual.png", "rate_quality.png"):
        assert (tmp_path / "report" / png).read_bytes().startswith(b"\x89PNG")
    assert not [str(w.message) for w in recwarn if "Glyph" in str(w.message)]
