"""The one exit-code table and the exceptions that carry a code to the CLI.

Domain modules raise these with a message that names the file or flag and the fix; `cli.py` prints
that one line and exits with the code. Nothing else decides exit codes.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # success; verdict/pipeline: PROMOTE; compare: REPRODUCED
    HOLD = 1  # verdict/pipeline: HOLD; compare: DIVERGED. Never a crash.
    BAD_INPUT = 2  # usage error or bad input
    PREREQS = 3  # prerequisites not met
    WORK_FAILED = 4  # cells failed, training diverged, export parity failed; partial results kept
    INTERRUPTED = 130  # Ctrl-C / SIGTERM; rerun resumes


EXIT_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success (verdict/pipeline: PROMOTE; compare: REPRODUCED)",
    ExitCode.HOLD: "HOLD (verdict/pipeline) or DIVERGED (compare); never a crash",
    ExitCode.BAD_INPUT: "usage error or bad input; the message names the file/flag and the fix",
    ExitCode.PREREQS: "prerequisites not met; `ensemble-kit prereqs` says which",
    ExitCode.WORK_FAILED: "work failed (cells, training, export parity); partial results kept",
    ExitCode.INTERRUPTED: "interrupted; rerun the same command to resume",
}


class KitError(Exception):
    """An expected failure: one line for the user, and the exit code that goes with it."""

    exit_code: ExitCode = ExitCode.WORK_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class BadInput(KitError):
    exit_code = ExitCode.BAD_INPUT


class PrereqError(KitError):
    exit_code = ExitCode.PREREQS


class WorkFailed(KitError):
    exit_code = ExitCode.WORK_FAILED
