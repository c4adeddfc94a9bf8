"""The one exit-code table and the exceptions that carry a code to the CLI.

Domain modules raise these with a message that names the file or flag and the fix; the CLI
(`kit.cli.KitGroup`) prints that one line and exits with the code. Expected OS failures (a full disk)
are mapped here too (`from_os_error`), so nothing else decides exit codes.
"""

from __future__ import annotations

import errno
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # success; verdict/pipeline: PROMOTE; compare: REPRODUCED or CONFIRMS
    HOLD = 1  # verdict/pipeline: HOLD; compare: DIVERGED or REFUTES. Never a crash.
    BAD_INPUT = 2  # usage error or bad input
    PREREQS = 3  # prerequisites not met
    WORK_FAILED = 4  # cells failed, training diverged, export parity failed; partial results kept
    INTERRUPTED = 130  # Ctrl-C / SIGTERM; rerun resumes
    PIPE_CLOSED = 141  # stdout's reader went away (`| head`): stopped quietly; 128 + SIGPIPE, as a shell reports it


EXIT_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success (verdict/pipeline: PROMOTE; compare: REPRODUCED/CONFIRMS)",
    ExitCode.HOLD: "HOLD (verdict/pipeline) or DIVERGED/REFUTES (compare); never a crash",
    ExitCode.BAD_INPUT: "usage error or bad input; the message names the file/flag and the fix",
    ExitCode.PREREQS: "prerequisites not met; `ensemble-kit prereqs` says which",
    ExitCode.WORK_FAILED: "work failed (cells, training, export parity); partial results kept",
    ExitCode.INTERRUPTED: "interrupted; rerun the same command to resume",
    ExitCode.PIPE_CLOSED: "the reader of stdout went away (e.g. `| head`); output stopped quietly",
}

INTERRUPTED_MESSAGE = "interrupted: finished work is kept; rerun the same command to resume"


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


# ---- a full (or read-only) disk is bad input: free space and rerun, finished work is kept --------------

# errno -> (what happened, what to do). Raised by Python itself (OSError) or printed by a tool.
DISK_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("disk full", "free space and rerun (finished work is kept)"),
    errno.EDQUOT: ("disk quota exceeded", "free space and rerun (finished work is kept)"),
    errno.EROFS: ("read-only file system", "pick a writable --out-dir and rerun (finished work is kept)"),
}
DISK_ERROR_TEXTS: tuple[str, ...] = ("No space left on device", "Disk quota exceeded", "Read-only file system")


def is_out_of_space(exc: BaseException) -> bool:
    """Disk full / quota / read-only out-dir, whether Python raised it or a tool's stderr says it."""
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        return True
    text = f"{exc} {getattr(exc, 'stderr_tail', '')}"
    return any(t in text for t in DISK_ERROR_TEXTS)


# errno -> (what is wrong with the path, what to do): paths a user chose (--out-dir, --out, $HOME, the
# cache) that cannot be written or are not what they must be. Bad input naming the path, never a kit bug.
PATH_ERRNOS: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied", "pick a path you can write to, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "pick a path you can write to, or fix its permissions"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder", "pick another path"),
    errno.EISDIR: ("is a folder where a file is expected", "name a file, or remove the folder"),
    errno.ENAMETOOLONG: ("a name in this path is too long (at most 255 bytes per name)", "use a shorter name"),
    errno.ELOOP: ("too many levels of symbolic links", "pass the real path"),
    errno.EEXIST: ("already exists", "pick another path, or remove it"),
}


def from_os_error(exc: OSError) -> KitError | None:
    """The KitError an expected OSError stands for (a full disk, an unwritable or impossible path: bad
    input naming the path), or None for a bug."""
    if exc.errno in DISK_ERRNOS:
        what, fix = DISK_ERRNOS[exc.errno]
        return BadInput(f"{what} while writing {exc.filename or ''}: {fix}")
    if exc.errno in PATH_ERRNOS and exc.filename:
        what, fix = PATH_ERRNOS[exc.errno]
        return BadInput(f"{exc.filename}: {what}", hint=fix)
    return None
