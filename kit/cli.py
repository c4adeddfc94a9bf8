"""The click door: parses options, calls the domain modules, prints results, maps errors to exit codes.

Nothing here computes anything; each command's work lives in its own module and is callable from Python.
"""

from __future__ import annotations

import os
import sys
import traceback

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

# ---- reference packs (issue: refs) -------------------------------------------------------------
