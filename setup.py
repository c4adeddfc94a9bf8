"""Build hook (everything else is in pyproject.toml): a wheel built from a git checkout records the commit
it was built from in kit/_build.json, so an installed kit's environment fingerprint names its commit
(kit.env.fingerprint.kit_commit). Without git, a kit/_build.json already in the tree (an unpacked
`ensemble-kit dist` tarball) travels as package data."""

import json
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    done = subprocess.run([git, "-C", str(HERE), *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


class BuildPyWithCommit(build_py):
    def run(self) -> None:
        super().run()
        top = _git("rev-parse", "--show-toplevel")
        commit = _git("rev-parse", "HEAD") if top and Path(top).resolve() == HERE else None
        if commit:
            dirty = bool(_git("status", "--porcelain", "--", "kit"))
            target = Path(self.build_lib) / "kit" / "_build.json"
            target.write_text(json.dumps({"commit": commit, "dirty": dirty}, sort_keys=True) + "\n")


setup(cmdclass={"build_py": BuildPyWithCommit})
