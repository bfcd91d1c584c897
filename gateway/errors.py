"""Errors a user can cause, each mapped to an exit code; the CLI prints them without a traceback.

Messages must never carry an ID number in the clear or any secret: callers mask before raising.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PROBLEMS = 1  # the work found problems: invalid IDs, quarantined rows, a broken chain
EXIT_USAGE = 2  # usage or configuration error


class GatewayError(Exception):
    """Base for every expected failure. ``exit_code`` tells the CLI how to end."""

    exit_code = EXIT_USAGE


class ConfigError(GatewayError):
    """The configuration is wrong; the message names the key path (``jobs.x.schedule: ...``)."""


class KeyringError(GatewayError):
    """The keyring is missing, unreadable, too widely readable or lacks a needed key."""


class StoreError(GatewayError):
    """The store database cannot be reached or its schema is not current."""


class SourceError(GatewayError):
    """A department's system or file cannot be read: names the system, the source and the cause."""

    exit_code = EXIT_PROBLEMS

    def __init__(self, system: str, source: str, cause: str):
        self.system, self.source, self.cause = system, source, cause
        super().__init__(f"{system}: {source}: {cause}")


class TransientSourceError(SourceError):
    """A failure worth retrying (connection refused, timeout): the sync engine backs off and retries."""


class ProblemsFound(GatewayError):
    """The command ran but found problems (exit 1)."""

    exit_code = EXIT_PROBLEMS
