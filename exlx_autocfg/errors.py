"""Errors a user can act on.

Every error the tool expects (bad input, a model that cannot fit, a stale profile) is an `ExlxError`:
the CLI prints its message as one line and exits with its code; nothing else escapes as a traceback.
"""

from __future__ import annotations

# Stable exit codes, documented in docs/cli.md.
EXIT_OK = 0
EXIT_NEGATIVE = 1  # the answer is "no": a check failed, the model cannot fit, the profile is stale
EXIT_USAGE = 2  # bad arguments or bad input files
EXIT_STRICT_WARNINGS = 3  # `check --strict` saw warnings


class ExlxError(Exception):
    """An expected failure with a one-line, user-facing message."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        return f"{text} ({self.hint})" if self.hint else text


class UsageError(ExlxError):
    """Arguments that make no sense together, an unknown GPU name, an unknown option value."""


class InputError(ExlxError):
    """A file the user gave us is unreadable or malformed (config.json, safetensors header, profile)."""


class ModelSpecError(InputError):
    """config.json or a safetensors header is missing, malformed or inconsistent."""


class HubError(InputError):
    """A Hugging Face Hub model cannot be read: repo or revision not found, gated, unreachable, not cached."""


class NoCandidateError(ExlxError):
    """No branch of a Hub repo holds an EXL2 model that can be planned (a negative answer)."""

    exit_code = EXIT_NEGATIVE


class ProfileError(InputError):
    """A profile file does not parse or fails validation."""


class ProbeError(ExlxError):
    """The target interpreter cannot run the probe at all."""


class DoesNotFitError(ExlxError):
    """The model cannot fit at any context with the constraints given."""

    exit_code = EXIT_NEGATIVE


class BackendRefusedError(UsageError):
    """The user forced a backend that is invalid on this machine; the message carries the reasons."""


class StaleProfileError(ExlxError):
    """The profile no longer matches the machine, the libraries or the model."""

    exit_code = EXIT_NEGATIVE
