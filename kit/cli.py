"""The click door: parses options, calls the domain modules, prints results, maps errors to exit codes.

Nothing here computes anything; each command's work lives in its own module and is callable from Python.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import click

from kit import __version__
from kit.console import err
from kit.errors import ExitCode, KitError

EPILOG_EXIT_CODES = "Exit codes: 0 ok/PROMOTE, 1 HOLD/DIVERGED, 2 bad input, 3 prerequisites, 4 work failed, 130 interrupted."


class KitGroup(click.Group):
    """Turns every expected failure into one line and its documented exit code (never a traceback)."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except KitError as exc:
            err.print(f"[red]error:[/red] {exc}", markup=True)
            sys.exit(int(exc.exit_code))
        except KeyboardInterrupt:
            err.print("interrupted: finished work is kept; rerun the same command to resume")
            sys.exit(int(ExitCode.INTERRUPTED))
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except OSError as exc:
            if exc.errno == 28:  # ENOSPC
                err.print(f"[red]error:[/red] disk full while writing {exc.filename or ''}: free space and rerun (finished work is kept)")
                sys.exit(int(ExitCode.BAD_INPUT))
            raise _internal(exc) from None
        except Exception as exc:  # a bug: say so in one line, keep the traceback for the report
            raise _internal(exc) from None


def _internal(exc: BaseException) -> SystemExit:
    if os.environ.get("ENSEMBLE_KIT_DEBUG"):
        traceback.print_exception(exc)
    else:
        err.print(
            f"[red]internal error:[/red] {type(exc).__name__}: {exc} "
            "(a bug in ensemble-kit; rerun with ENSEMBLE_KIT_DEBUG=1 for the traceback and report it)"
        )
    return SystemExit(int(ExitCode.WORK_FAILED))


@click.group(cls=KitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EPILOG_EXIT_CODES)
@click.version_option(__version__, prog_name="ensemble-kit")
def main() -> None:
    """Regenerate a VMAF corpus with this box's encoders, retrain a LOSO ensemble, return a verdict.

    \b
    Example (everything on built-in demo clips):
      ensemble-kit pipeline --demo --out-dir runs/demo
    """


# ---- corpus engine (issue: corpus) ------------------------------------------------------------

# ---- training, verdict, export, predict, report (issue: trainer) -------------------------------

# ---- environment, platform, prereqs, env export, build-libvmaf (issue: environments) -----------

# ---- pipeline, bundle, verify, compare, dist (issue: pipeline) ---------------------------------


@main.command("bundle")
@click.argument("run_dir", type=click.Path(path_type=Path), default=Path("runs/demo"))
@click.option("--out", "out", type=click.Path(path_type=Path), default=None,
              help="Where to write the tarball (a file or a folder); default: inside RUN_DIR.")
def bundle_cmd(run_dir: Path, out: Path | None) -> None:
    """Pack this run's results into ensemble-results-<platform>-<box>-<utc>.tar.gz.

    Only files this run wrote go in, hashed in manifest.json; the same run always gives the same bytes.

    \b
    Example:
      ensemble-kit bundle runs/demo
    """
    from kit import bundle

    result = bundle.make_bundle(run_dir, out)
    err.print(f"bundle: {len(result.manifest['files'])} files, verdict {result.manifest['verdict']['verdict']}")
    err.print(f"sha256: {result.sha256}")
    click.echo(str(result.path))


@main.command("verify")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--max-bytes", type=click.IntRange(min=1), default=None,
              help="Refuse bundles whose content exceeds this many bytes (default 8 GiB).")
def verify_cmd(bundle_path: Path, max_bytes: int | None) -> None:
    """Check a returned bundle: safe extraction, every file's sha256, the manifest, the schema version.

    \b
    Example:
      ensemble-kit verify ensemble-results-linux-cuda-x86_64-3f9c0a1b2c4d-20261125T101500Z.tar.gz
    """
    from kit import bundle

    result = bundle.verify(bundle_path, max_total_bytes=max_bytes or bundle.DEFAULT_MAX_BUNDLE_BYTES)
    m = result.manifest
    click.echo(f"OK {bundle_path}: {result.n_files} files, {result.total_bytes} bytes, verdict {m['verdict']['verdict']}, "
               f"platform {m.get('platform')}, box {m.get('box_id')}, kit {m.get('kit_version')}")
    click.echo(f"sha256 {result.sha256}")


@main.command("compare")
@click.argument("lead", type=click.Path(path_type=Path))
@click.argument("collab", type=click.Path(path_type=Path))
@click.option("--plcc-tol", type=float, default=0.0, show_default=True,
              help="Largest |PLCC difference| per seed and per fold still counted as reproduced (0 = exact).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
@click.option("-v", "--verbose", is_flag=True, help="List every fold's PLCC.")
def compare_cmd(lead: Path, collab: Path, plcc_tol: float, as_json: bool, verbose: bool) -> None:
    """Does COLLAB reproduce LEAD? Bundles or run directories; exit 0 REPRODUCED, 1 DIVERGED.

    Compares verdicts, per-seed and per-fold PLCCs, shared sources and environments.

    \b
    Examples:
      ensemble-kit compare runs/lead ensemble-results-linux-cpu-x86_64-ab12cd34ef56-20261125T101500Z.tar.gz
      ensemble-kit compare lead.tar.gz collab.tar.gz --plcc-tol 0.005   # different hardware
    """
    from kit import bundle
    from kit.fsio import canonical_json

    cmp = bundle.compare(lead, collab, plcc_tol=plcc_tol)
    if as_json:
        click.echo(canonical_json(cmp.to_dict()), nl=False)
    else:
        for line in bundle.comparison_lines(cmp, verbose=verbose):
            click.echo(line)
    if not cmp.reproduced:
        sys.exit(int(ExitCode.HOLD))


@main.command("dist")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Tarball path or folder (default: dist/ in the checkout).")
@click.option("--with-wheels", "with_wheels", metavar="PLATFORM", default=None,
              help="Add the locked wheels for PLATFORM (linux-64, linux-aarch64, osx-arm64, osx-64) for offline installs.")
def dist_cmd(out: Path | None, with_wheels: str | None) -> None:
    """Build the distribution tarball a collaborator unpacks and runs with ./run (no clone needed).

    \b
    Examples:
      ensemble-kit dist                          # dist/ensemble-kit-<version>.tar.gz, < 50 MiB
      ensemble-kit dist --with-wheels linux-64   # + every locked wheel, installs offline
    """
    from kit import dist

    result = dist.make_dist(out, with_wheels=with_wheels)
    err.print(f"dist: {result.n_files} files, {result.size / 2**20:.1f} MiB, sha256 {result.sha256}")
    click.echo(str(result.path))


# ---- reference packs (issue: refs) -------------------------------------------------------------
