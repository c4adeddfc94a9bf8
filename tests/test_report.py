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
