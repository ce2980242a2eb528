"""Errors a user can fix. Every message says what failed, the offending value, and the fix.

`UserError` (and its subclasses) exit with code 2 from the CLI and from `python -m slmops.steps.*`;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a message that names what, the value, and the fix. Exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, problems: list[str] | None = None):
        self.problems = list(problems or [])
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class GateFailed(UserError):
    """A quality gate did not pass (register/promote). Exit code 3 so CI can tell it from bad input."""

    exit_code = 3


def run_main(main, argv=None) -> None:
    """Run a step's `main(argv)`; turn UserError into a clean message on stderr and its exit code."""
    import sys

    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
