"""Wall time of the demo pipeline (`ensemble-kit pipeline --demo`) against its 3-minute budget.

    python bench/demo_pipeline.py            # a fresh run in a temp dir, then the resume of it

Prints each step's seconds, the total, and the ratio to the 180 s budget (< 1.0 = within budget); then
reruns the same command in the same directory (the resume, everything reused) and prints its time and
its ratio to the first run. The "plain way" here is the budget the issue sets, since the old kit had no
demo to compare with.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 180.0


def run(out: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kit", "pipeline", "--demo", "--out-dir", str(out)],
                          capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    work = Path(tempfile.mkdtemp(prefix="ekit-demo-bench-"))
    try:
        out = work / "demo"
        first_s, first = run(out)
        if first.returncode not in (0, 1):
            print(first.stderr[-3000:])
            return 2
        for m in re.finditer(r"^\[\d+/\d+\] (\w+)\s.*\[([\d.]+) s\]$", first.stderr, re.M):
            print(f"  {m.group(1):<8} {float(m.group(2)):6.1f} s")
        verdict = first.stdout.split()[0] if first.stdout.strip() else "?"
        print(f"demo pipeline: {first_s:.1f} s wall ({verdict}); {first_s / BUDGET_S:.2f}x of the {BUDGET_S:.0f} s budget")
        again_s, again = run(out)
        print(f"resume (everything reused): {again_s:.1f} s, exit {again.returncode}; "
              f"{again_s / first_s:.2f}x of the first run")
        return 0 if first_s < BUDGET_S and again.returncode == first.returncode else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
