"""The exception tree. Every error a user can cause ends up here, with a message that says what happened, where
(file, key path or line) and what to do about it. The CLI turns these into one message and an exit code.

    PipelineError                 base; carries the exit code the CLI uses
    +-- UsageError                bad command line (exit 2)
    |   +-- SecretError           the webhook signing secret is missing or not a whsec_ value (exit 2)
    +-- SpecError                 the YAML job spec is invalid (exit 2); names the file and dotted key path
    +-- InputError                the contacts file cannot be read as a table (exit 2, or 3 if found after sending
                                  began); names the file and line
    +-- OutputError               the results file or state cannot be written (exit 2 before sending, 3 after)
    +-- CampaignBusy              another process is running the same campaign (exit 2)
    +-- ApiUnavailable            a check before sending could not be made: the API refused the credentials or
                                  could not be reached (exit 3, nothing sent)

Row-level problems (an invalid GUID, a failed request) are never exceptions: they are a status and a reason in the
results file.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ROWS_NOT_SENT = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_DEFERRED = 4  # finished: every row sent or deferred to its sending hours (send.window); a later run sends them
EXIT_INTERNAL = 70  # EX_SOFTWARE from sysexits.h: not 0-3, so schedulers never mistake a bug for a result
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class PipelineError(Exception):
    """Base of every error the tool reports as a message rather than a traceback."""

    exit_code = EXIT_USAGE


class UsageError(PipelineError):
    """The command line asks for something that cannot be done."""


class SecretError(UsageError):
    """SENT_DM_WEBHOOK_SECRET is missing or malformed; the message names the variable and never its value."""


class SpecError(PipelineError):
    """The job spec is invalid: the message lists every problem with its file and key path."""


class _StopsARun(PipelineError):
    """An error that is a usage error before anything was sent, and an aborted run after."""

    def __init__(self, message: str, *, after_sending: bool = False) -> None:
        super().__init__(message)
        self.exit_code = EXIT_ABORTED if after_sending else EXIT_USAGE


class InputError(_StopsARun):
    """The contacts file is missing, empty or malformed (exit 2; 3 when found only after sending began)."""


class OutputError(_StopsARun):
    """The results file (or the state next to it) cannot be written."""


class CampaignBusy(PipelineError):
    """Another process holds the campaign's lock: running both could send a message twice."""


class ApiUnavailable(PipelineError):
    """A call made before sending (the template check) was refused or got no usable answer: nothing was sent."""

    exit_code = EXIT_ABORTED
