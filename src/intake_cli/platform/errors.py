"""Every failure an operator can act on is an IntakeError.

The CLI prints the message and exits with the class's exit code; nothing else
reaches the terminal as a traceback. A subclass's docstring is its default
message, so the text an operator reads sits next to the class it belongs to.
"""

from __future__ import annotations


class IntakeError(Exception):
    """intake could not complete the operation."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(IntakeError):
    """The configuration file is not valid."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = f"{source}: invalid configuration" if source else "invalid configuration"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class UsageError(IntakeError):
    """The command was given an argument it cannot use."""

    exit_code = 2


class ConnectionFailed(IntakeError):
    """A database could not be reached."""

    exit_code = 3


class DatabaseUnreachable(ConnectionFailed):
    """A database could not be reached; a drain worker waits for it."""

    def __init__(self, label: str, message: str) -> None:
        super().__init__(message)
        self.label = label


class EmbeddedClusterError(IntakeError):
    """The embedded PostgreSQL cluster could not be started or stopped."""

    exit_code = 4


class NotProvisioned(IntakeError):
    """DB1 has no intake schema yet: run `intake up` first."""

    exit_code = 5


class UnknownPool(IntakeError):
    """No pool with that id is provisioned in DB1."""

    exit_code = 2


class UnknownDeadLetter(UsageError):
    """No dead letter with that id is in the DLQ."""


class RefusedTeardown(IntakeError):
    """The event still holds intents; `intake down` will not throw them away."""

    exit_code = 6


class LedgerContractError(IntakeError):
    """DB2 does not offer the commit RPC the configuration names."""

    exit_code = 2


class LedgerUnavailable(IntakeError):
    """DB2 could not be reached or refused the commit; it will be retried."""

    exit_code = 3


class StateDirRefused(IntakeError):
    """The state directory holds files intake did not create; intake will not use it."""

    exit_code = 2


class ExportFailed(IntakeError):
    """The export could not be written and verified; nothing was torn down."""

    exit_code = 1
