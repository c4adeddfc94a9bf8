"""The click door (`ensemble-kit`): one group, the one error -> exit-code mapping, the command families.

Each family module (corpus, train, results, env, refs, pipeline) declares its commands with the shared
option decorators (`kit.cli.options`), calls one domain function per command and prints with
`kit.cli.output.emit`. Nothing here computes anything. Heavy libraries (torch, pandas) are imported
inside the commands that need them, so `ensemble-kit --help` stays fast.

Adding a command: write it in its family module (or a new one) and list it in that module's COMMANDS.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from kit import __version__
from kit.cli import corpus, deploy, env, pipeline, refs, results, train
from kit.cli.options import CONTEXT, EPILOG_EXIT_CODES
from kit.core import proc
from kit.core.console import err, printable
from kit.core.errors import INTERRUPTED_MESSAGE, BadInput, ExitCode, KitError, from_os_error
from kit.core.fsio import sweep_temp_dirs
from kit.corpus import ffmpeg
from kit.env import homes


class KitGroup(click.Group):
    """Turns every expected failure into one line and its documented exit code (never a traceback).

    SIGTERM is Ctrl-C for every command (exit 130), so `finally` blocks remove the kit's temp folders;
    folders a SIGKILLed run left in the temp dir are removed when the next command starts.

    A reader that goes away (`ensemble-kit compare a b | head -1`, `ensemble-kit --help | head -1`) ends
    any command quietly with ExitCode.PIPE_CLOSED, after its `finally` blocks ran (temp folders removed).
    """

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        """`--help` and `--version` print while the options are parsed, before `invoke`: a reader that is
        gone by then is the same quiet PIPE_CLOSED (click itself would exit 1)."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError:
            _reader_gone()
            raise  # not reached: _reader_gone exits

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        sweep_temp_dirs()
        homes.settle(_kit_cache())  # before matplotlib/onnxruntime are imported: no warnings of theirs about $HOME
        try:
            with proc.sigterm_as_interrupt():
                try:
                    return super().invoke(ctx)
                finally:
                    sys.stdout.flush()  # output still buffered meets a closed pipe here, not at exit
        except BrokenPipeError:
            _reader_gone()
        except KitError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            err.print(INTERRUPTED_MESSAGE, markup=False)
            sys.exit(int(ExitCode.INTERRUPTED))
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:  # a bad flag value or an unknown option: the same one line as any bad input
            where = exc.ctx.command_path if exc.ctx is not None else "ensemble-kit"
            _fail(BadInput(exc.format_message().rstrip("."), hint=f"see `{where} --help`"))
        except (click.exceptions.Exit, click.ClickException):
            raise
        except OSError as exc:
            expected = from_os_error(exc)  # a full disk: bad input (kit.core.errors.DISK_ERRNOS)
            if expected is None:
                raise _internal(exc) from None
            _fail(expected)
        except Exception as exc:  # a bug: say so in one line, keep the traceback for the report
            raise _internal(exc) from None


def _kit_cache() -> Path | None:
    try:
        return ffmpeg.cache_dir()
    except KitError:  # no home and no ENSEMBLE_KIT_CACHE: the command that needs the cache says so
        return None


def _fail(exc: KitError) -> None:
    err.print("[red]error:[/red] ", end="")
    err.print(printable(exc), markup=False)  # messages quote file names and values from untrusted files
    sys.exit(int(exc.exit_code))


def _reader_gone() -> None:
    """stdout's reader closed it: stop quietly (no traceback, nothing more written anywhere)."""
    with contextlib.suppress(OSError, ValueError):  # a test runner's stdout has no file descriptor
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush at exit now goes nowhere
    sys.exit(int(ExitCode.PIPE_CLOSED))


def _internal(exc: BaseException) -> SystemExit:
    if os.environ.get("ENSEMBLE_KIT_DEBUG"):
        traceback.print_exception(exc)
    else:
        err.print("[red]internal error:[/red] ", end="")
        err.print(printable(f"{type(exc).__name__}: {exc} (a bug in ensemble-kit; rerun with ENSEMBLE_KIT_DEBUG=1 "
                            "for the traceback and report it)"), markup=False)
    return SystemExit(int(ExitCode.WORK_FAILED))


@click.group(cls=KitGroup, context_settings=CONTEXT, epilog=EPILOG_EXIT_CODES)
@click.version_option(__version__, prog_name="ensemble-kit")
def main() -> None:
    """Regenerate a VMAF corpus with this box's encoders, retrain a LOSO ensemble, return a verdict.

    \b
    Example (everything on built-in demo clips):
      ensemble-kit pipeline --demo --out-dir runs/demo
    """


for _family in (corpus, train, results, env, refs, pipeline, deploy):
    for _command in _family.COMMANDS:
        main.add_command(_command)
