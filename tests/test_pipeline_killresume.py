"""SIGKILL the pipeline at >= 10 random points across every step; each rerun must reproduce the uninterrupted
run and leave no temp file or folder behind.

Slow (a few minutes on 2 cores): run with `python -m pytest -m slow tests/test_pipeline_killresume.py`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "kill_resume.py"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_kill_resume_at_random_points_reproduces_the_uninterrupted_run():
    proc = subprocess.run([sys.executable, str(BENCH), "--kills", "10", "--seed", "1"], capture_output=True, text=True)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("kill/resume:")]
    assert summary and "10/10 equal to the uninterrupted run" in summary[0]
    assert "with no .tmp file or temp folder left" in summary[0]  # each trial checks leftovers (bench/kill_resume.py)
