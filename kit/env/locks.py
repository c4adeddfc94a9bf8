"""Which lock this environment came from, how far it has drifted, and conda-lock exports.

Two kinds of environment:
- a pixi environment (`PIXI_ENVIRONMENT_NAME` and `CONDA_PREFIX` set): its `conda-meta/*.json` records
  (name, version, build, sha256) and its PyPI distributions are compared with that environment's
  entries in `pixi.lock`;
- a pip environment: installed distributions are compared with the hash-pinned pip locks made for this
  platform, which ship inside the package (`kit/locks/`, kit.env.lockfiles); the one that explains the
  environment best is "the" lock (a CUDA and a CPU torch lock differ in torch's version).

pixi.lock is read with py-rattler (prefix.dev's own lock-file reader) and exported to conda-lock files
with pixi-to-conda-lock, both imported only when needed (`pip install 'ensemble-kit[locks]'`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from kit import __version__
from kit.core.errors import BadInput, PrereqError
from kit.core.fsio import sha256_file, write_with
from kit.core.ids import shorten
from kit.env.lockfiles import LOCKS_DIR, conda_platform, locks_for

REPO_ROOT = Path(__file__).resolve().parents[2]
# Distributions never in a requirements lock (the installer, the project itself).
NOT_LOCKED = frozenset({"pip", "wheel", "distribute", "ensemble-kit"})
REGENERATE_HINT = "regenerate it: python environments/regenerate.py"

LOCKS_HINT = "pip install 'ensemble-kit[locks]' (py-rattler + pixi-to-conda-lock)"


def canonical_name(name: str) -> str:
    """PEP 503 name normalisation: 'PyYAML' and 'pyyaml', 'py_rattler' and 'py-rattler' are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Difference:
    name: str
    kind: str  # "missing" | "version" | "build" | "sha256" | "extra"
    locked: str | None
    installed: str | None

    def __str__(self) -> str:
        if self.kind == "missing":
            return f"{self.name}: locked {self.locked}, not installed"
        if self.kind == "extra":
            return f"{self.name}: installed {self.installed}, not in the lock"
        return f"{self.name}: locked {self.locked}, installed {self.installed}"


@dataclass(frozen=True)
class DriftReport:
    kind: str  # "pixi" | "pip" | "none"
    name: str | None  # pixi environment or pip lock name
    lock_path: Path | None
    lock_sha256: str | None
    differences: tuple[Difference, ...] = ()
    extras: tuple[str, ...] = field(default=())  # installed but unlocked (pip envs): informational

    @property
    def in_sync(self) -> bool:
        return self.kind != "none" and not self.differences

    def identity(self) -> dict[str, Any]:
        """What the environment fingerprint records about the lock."""
        return {"kind": self.kind, "name": self.name, "sha256": self.lock_sha256, "in_sync": self.in_sync}

    def summary(self) -> str:
        if self.kind == "none":
            return "no lock found for this environment"
        where = f"{self.kind} lock {self.name!r} ({self.lock_path})"
        if not self.differences:
            return f"matches {where}"
        shown = "; ".join(str(d) for d in self.differences[:8])
        more = f"; and {len(self.differences) - 8} more" if len(self.differences) > 8 else ""
        return f"{len(self.differences)} difference(s) from {where}: {shown}{more}"

    def to_json(self) -> dict[str, Any]:
        return {**self.identity(), "lock_path": str(self.lock_path) if self.lock_path else None,
                "differences": [d.__dict__ for d in self.differences], "extras": list(self.extras)}


# ---- pip environments ------------------------------------------------------------------------


def parse_requirements_lock(path: Path, _seen: frozenset[Path] = frozenset()) -> dict[str, str]:
    """name -> pinned version from a hash-pinned lock (`name==ver \\ --hash=...`), markers evaluated,
    `-r other.txt` includes followed (relative to the including file, as pip does)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"cannot read lock {path}: {exc}", hint=REGENERATE_HINT) from None
    pins: dict[str, str] = {}
    for logical in re.sub(r"\\\n", " ", text).splitlines():
        line = logical.split(" #", 1)[0].strip()
        include = re.match(r"^(?:-r|--requirement)[ =](\S+)$", line)
        if include:
            target = (path.parent / include.group(1)).resolve()
            if target in _seen:
                raise BadInput(f"{path}: `-r {include.group(1)}` includes itself", hint=REGENERATE_HINT)
            pins.update(parse_requirements_lock(target, _seen | {path.resolve()}))
            continue
        if not line or line.startswith(("#", "-")):
            continue
        spec = line.split(" --hash", 1)[0].strip()
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            raise BadInput(f"{path}: not a pinned requirement: {spec!r}", hint=REGENERATE_HINT) from None
        if req.marker is not None and not req.marker.evaluate():
            continue
        pinned = [s.version for s in req.specifier if s.operator == "=="]
        if len(pinned) != 1:
            raise BadInput(f"{path}: {req.name} is not pinned with ==", hint=REGENERATE_HINT)
        pins[canonical_name(req.name)] = pinned[0]
    return pins


def installed_distributions(paths: Sequence[str] | None = None) -> dict[str, str]:
    """canonical name -> version of the distributions importable here (or under `paths`)."""
    found: dict[str, str] = {}
    dists = metadata.distributions(path=list(paths)) if paths is not None else metadata.distributions()
    for dist in dists:
        name = dist.metadata.get("Name")
        if name:
            found.setdefault(canonical_name(name), dist.version)
    return found


def compare_pins(locked: dict[str, str], installed: dict[str, str]) -> tuple[list[Difference], list[str]]:
    """(differences for locked packages, names installed but not locked)."""
    diffs = []
    for name in sorted(locked):
        if name in NOT_LOCKED:
            continue
        have = installed.get(name)
        if have is None:
            diffs.append(Difference(name, "missing", locked[name], None))
        elif not _same_version(locked[name], have):
            diffs.append(Difference(name, "version", locked[name], have))
    extras = sorted(n for n in installed if n not in locked and n not in NOT_LOCKED)
    return diffs, extras


def _same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


def pip_drift(lock_dir: Path = LOCKS_DIR, *, names: Sequence[str] | None = None,
              installed: dict[str, str] | None = None) -> DriftReport:
    """Compare this interpreter's distributions with the best-matching pip lock of this platform."""
    installed = installed if installed is not None else installed_distributions()
    candidates = names if names is not None else [lock.name for lock in locks_for()]
    best: DriftReport | None = None
    for name in candidates:
        path = lock_dir / f"{name}.txt"
        if not path.is_file():
            continue
        locked = parse_requirements_lock(path)
        diffs, extras = compare_pins(locked, installed)
        report = DriftReport("pip", name, path, sha256_file(path), tuple(diffs), tuple(extras))
        # the lock that explains the environment best: fewest differences, then fewest unlocked extras
        if best is None or (len(report.differences), len(report.extras)) < (len(best.differences), len(best.extras)):
            best = report
    return best or DriftReport("none", None, None, None)


# ---- pixi environments -----------------------------------------------------------------------


@dataclass(frozen=True)
class CondaPackage:
    name: str
    version: str
    build: str
    sha256: str | None

    def label(self) -> str:
        return f"{self.version} ({self.build})"


def read_conda_meta(prefix: Path) -> dict[str, CondaPackage]:
    """The conda packages installed in `prefix`, from its conda-meta/*.json records."""
    meta = prefix / "conda-meta"
    if not meta.is_dir():
        raise PrereqError(f"{prefix} has no conda-meta/ directory: not a conda/pixi environment",
                          hint="run inside `pixi shell` / `pixi run`, or unset CONDA_PREFIX")
    found = {}
    for record_path in sorted(meta.glob("*.json")):
        try:
            rec = json.loads(record_path.read_text(encoding="utf-8"))
            pkg = CondaPackage(rec["name"], str(rec["version"]), str(rec["build"]), rec.get("sha256"))
        except (OSError, ValueError, KeyError) as exc:
            raise PrereqError(f"unreadable conda-meta record {record_path}: {exc}",
                              hint="reinstall the environment: pixi install --locked") from None
        found[pkg.name] = pkg
    return found


def _rattler() -> Any:
    try:
        import rattler  # optional extra [locks]: imported only when a pixi.lock is read
    except ImportError:
        raise PrereqError("reading pixi.lock needs py-rattler, which is not installed", hint=LOCKS_HINT) from None
    return rattler


def read_pixi_lock(lock_path: Path, environment: str, platform: str) -> tuple[dict[str, CondaPackage], dict[str, str]]:
    """(conda packages, pypi name -> version) that `pixi.lock` pins for one environment on one platform."""
    rattler = _rattler()
    if not lock_path.is_file():
        raise BadInput(f"pixi.lock not found: {lock_path}",
                       hint="maintainers create it with `pixi lock` on a machine that reaches conda-forge")
    try:
        lock = rattler.LockFile.from_path(lock_path)
    except Exception as exc:  # noqa: BLE001 - rattler raises its own error types
        raise BadInput(f"{lock_path} is not a readable pixi.lock: {exc}", hint="regenerate it with `pixi lock`") from None
    env = lock.environment(environment)
    if env is None:
        names = ", ".join(name for name, _ in lock.environments())
        raise BadInput(f"{lock_path} has no environment {environment!r} (it has: {names})",
                       hint="run `pixi lock` after changing pixi.toml")
    lock_platform = next((p for p in env.platforms() if str(p) == platform), None)
    if lock_platform is None:
        raise BadInput(f"{lock_path}: environment {environment!r} is not locked for {platform}",
                       hint=f"add {platform} to the environment's platforms in pixi.toml and run `pixi lock`")
    conda: dict[str, CondaPackage] = {}
    pypi: dict[str, str] = {}
    for pkg in env.packages(lock_platform) or []:
        if isinstance(pkg, rattler.CondaLockedPackage):
            rec = pkg.package_record
            conda[rec.name.normalized] = CondaPackage(rec.name.normalized, str(rec.version), rec.build,
                                                      rec.sha256.hex() if rec.sha256 else None)
        else:
            pypi[canonical_name(pkg.name)] = str(pkg.version)
    return conda, pypi


def compare_conda(locked: dict[str, CondaPackage], installed: dict[str, CondaPackage]) -> list[Difference]:
    diffs = []
    for name in sorted(set(locked) | set(installed)):
        want, have = locked.get(name), installed.get(name)
        if have is None:
            diffs.append(Difference(name, "missing", want.label(), None))  # type: ignore[union-attr]
        elif want is None:
            diffs.append(Difference(name, "extra", None, have.label()))
        elif want.version != have.version:
            diffs.append(Difference(name, "version", want.label(), have.label()))
        elif want.build != have.build:
            diffs.append(Difference(name, "build", want.label(), have.label()))
        elif want.sha256 and have.sha256 and want.sha256 != have.sha256:
            diffs.append(Difference(name, "sha256", f"sha256 {shorten(want.sha256)}", f"sha256 {shorten(have.sha256)}"))
    return diffs


def site_packages(prefix: Path) -> list[str]:
    """The environment's site-packages (lib/python3.X/site-packages), where its PyPI packages live."""
    return [str(p) for p in sorted(prefix.glob("lib/python3*/site-packages"))] + \
        [str(p) for p in sorted(prefix.glob("Lib/site-packages"))]


def pixi_drift(prefix: Path, lock_path: Path, environment: str, platform: str | None = None) -> DriftReport:
    """Every difference between a pixi environment on disk and its pixi.lock entries, by name."""
    platform = platform or conda_platform()
    locked_conda, locked_pypi = read_pixi_lock(lock_path, environment, platform)
    diffs = compare_conda(locked_conda, read_conda_meta(prefix))
    if locked_pypi:
        pypi_installed = installed_distributions(site_packages(prefix))
        pypi_diffs, _ = compare_pins(locked_pypi, pypi_installed)
        diffs.extend(pypi_diffs)
    return DriftReport("pixi", environment, lock_path, sha256_file(lock_path), tuple(diffs))


def pixi_context(environ: dict[str, str] | None = None) -> tuple[str, Path, Path] | None:
    """(environment name, prefix, pixi.lock path) when running inside a pixi environment."""
    env = os.environ if environ is None else environ
    name, prefix = env.get("PIXI_ENVIRONMENT_NAME"), env.get("CONDA_PREFIX")
    if not name or not prefix:
        return None
    root = Path(env.get("PIXI_PROJECT_ROOT") or REPO_ROOT)
    return name, Path(prefix), root / "pixi.lock"


def check_drift(environ: dict[str, str] | None = None) -> DriftReport:
    """The drift report for the environment this process runs in (pixi if inside one, else pip)."""
    ctx = pixi_context(environ)
    if ctx is not None:
        name, prefix, lock_path = ctx
        return pixi_drift(prefix, lock_path, name)
    return pip_drift()


@cache
def current_lock() -> DriftReport:
    """This process's lock record (cached: the fingerprint asks for it per run, not per row).

    Inside pixi, the lock's hash and drift; a missing py-rattler or pixi.lock still names the lock.
    """
    try:
        return check_drift()
    except (PrereqError, BadInput):
        ctx = pixi_context()
        if ctx is None:
            return DriftReport("none", None, None, None)
        name, _prefix, lock_path = ctx
        sha = sha256_file(lock_path) if lock_path.is_file() else None
        return DriftReport("pixi", name, lock_path, sha, (Difference("pixi.lock", "missing", "readable", None),))


# ---- conda-lock export -----------------------------------------------------------------------


def lock_environments(lock_path: Path) -> list[str]:
    rattler = _rattler()
    return sorted(name for name, _ in rattler.LockFile.from_path(lock_path).environments())


# The project's own (editable) entry in a pixi.lock is `pypi: ./`; pixi-to-conda-lock passes that path on
# with version `<dynamic>`, which conda-lock renders as `ensemble-kit == <dynamic>` (env files) or
# `ensemble-kit @ ./` (explicit files), and pip rejects both. As a URL source `file:.` it renders as
# `ensemble-kit @ file:.` in both, which pip installs when run from the checkout (conda-lock install is).
SELF_SOURCE_URL = "file:."


def _installable_self_entry(package: dict[str, Any]) -> None:
    """Rewrite a local-path pip entry (the project itself) so that conda-lock renders a line pip installs."""
    if package.get("manager") == "pip" and "://" not in str(package.get("url", "")) and \
            not str(package.get("url", "")).startswith("file:"):
        package.update(version=__version__, url=SELF_SOURCE_URL, source={"type": "url", "url": SELF_SOURCE_URL})


def _convert_sorted(converter: Any, lock_path: Path, env: str, out: Path) -> None:
    """pixi-to-conda-lock's conversion, with the project's own entry made installable by pip and with
    platforms and packages sorted: the same pixi.lock always gives the same bytes (py-rattler hands
    platforms over in no fixed order)."""
    import yaml  # optional extra [locks]: imported only for an export

    converter.convert(lock_path, env, out)
    data = yaml.safe_load(out.read_text(encoding="utf-8"))
    for package in data.get("package", []):
        _installable_self_entry(package)
    meta = data.get("metadata", {})
    meta["platforms"] = sorted(meta.get("platforms", []))
    meta["content_hash"] = dict(sorted(meta.get("content_hash", {}).items()))
    data["package"] = sorted(data.get("package", []), key=lambda p: (p["platform"], p["manager"], p["name"], p["url"]))
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def export_conda_locks(lock_path: Path, out_dir: Path, environments: Iterable[str] = ()) -> list[Path]:
    """pixi.lock -> `<out_dir>/<env>.conda-lock.yml` per environment (for conda / micromamba users).

    Install one with `micromamba create -n ekit -f environments/cpu.conda-lock.yml` or `conda-lock install`.
    """
    _rattler()
    try:
        import pixi_to_conda_lock  # optional extra [locks]: imported only for an export
    except ImportError:
        raise PrereqError("conda-lock export needs pixi-to-conda-lock, which is not installed", hint=LOCKS_HINT) from None
    if not lock_path.is_file():
        raise BadInput(f"pixi.lock not found: {lock_path}",
                       hint="maintainers create it with `pixi lock` on a machine that reaches conda-forge")
    available = lock_environments(lock_path)
    wanted = list(environments) or available
    unknown = [e for e in wanted if e not in available]
    if unknown:
        raise BadInput(f"--environment: {', '.join(unknown)} not in {lock_path}", hint=f"choose from {', '.join(available)}")
    written = []
    for env in wanted:
        out = out_dir / f"{env}.conda-lock.yml"
        try:
            write_with(out, lambda tmp, env=env: _convert_sorted(pixi_to_conda_lock, lock_path, env, tmp))
        except ValueError as exc:  # e.g. PyPI packages but no conda pip in that environment
            raise BadInput(f"cannot export environment {env!r} of {lock_path}: {exc}",
                           hint="add `pip` to the environment's conda dependencies and run `pixi lock`") from None
        written.append(out)
    return written
