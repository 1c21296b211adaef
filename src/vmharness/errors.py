"""Errors that map to the CLI's exit codes (see ARCHITECTURE.md)."""

from __future__ import annotations

from pathlib import Path

EXIT_PASS = 0
EXIT_NOT_ALL_PASSED = 1
EXIT_USAGE = 2
EXIT_INFRA = 3
EXIT_INTERRUPTED = 130  # Ctrl-C: the shell's 128 + SIGINT; `vmharness resume` finishes the job
EXIT_TERMINATED = 143  # SIGTERM (a cancelled CI job, `timeout`): 128 + 15; handled as Ctrl-C


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's handler: every path that handles Ctrl-C
    (VMs stopped, runs kept for `vmharness resume`) handles it too."""


class VmharnessError(Exception):
    """Base of every error vmharness reports to the user without a traceback."""

    exit_code = EXIT_INFRA
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class SpecError(VmharnessError):
    """Bad user input: a spec, recipe, known-failures or conditions file. Exit 2.

    Carries where the problem is so the message can name file, line and field.
    """

    exit_code = EXIT_USAGE

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.detail = message
        where = ""
        if self.file:
            where = self.file + (f":{line}" if line else "")
        if field:
            where = f"{where}: field '{field}'" if where else f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message, hint=hint)


class UsageError(VmharnessError):
    """Wrong command-line use. Exit 2."""

    exit_code = EXIT_USAGE


class InfraError(VmharnessError):
    """Something outside the tests failed (qemu or the mirror or the schedd). Exit 3."""

    exit_code = EXIT_INFRA
