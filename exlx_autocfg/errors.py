"""Errors a user can act on.

Every error the tool expects (bad input, a model that cannot fit, a stale profile) is an `ExlxError`:
the CLI prints its message as one line and exits with its code; nothing else escapes as a traceback.
Each subclass carries a stable `code` (registered in `ERROR_CODES`, documented in docs/errors.md) that
programs branch on, never the message text; `--json` commands print `error_document(exc)` on stdout.
"""

from __future__ import annotations

from typing import Any

# Stable exit codes, documented in docs/errors.md.
EXIT_OK = 0
EXIT_NEGATIVE = 1  # the answer is "no": a check failed, the model cannot fit, the profile is stale
EXIT_USAGE = 2  # bad arguments or bad input files
EXIT_STRICT_WARNINGS = 3  # `check --strict` saw warnings
EXIT_INTERNAL = 70  # a bug (EX_SOFTWARE): still one line, EXLX_DEBUG=1 shows the traceback
EXIT_INTERRUPTED = 130

# The error codes: one per ExlxError subclass, plus the ones the CLI shell uses for what is not an
# ExlxError (click's usage errors, interrupts, bugs). Shape `error.<what>`; never renamed once released.
ERROR_CODES: dict[str, str] = {
    "error": "an expected failure without a more precise class",
    "error.usage": "arguments or options that make no sense (also click's own usage errors)",
    "error.option": "one option (CLI flag or keyword argument) has a value it cannot take",
    "error.input": "a file the user gave is unreadable or malformed",
    "error.input.special_file": "a path that must be a regular file is a FIFO, device, socket or directory",
    "error.output": "an output target (--out) is refused: a device, FIFO or socket, or cannot be written",
    "error.output.locked": "another process held the output's lock for longer than the lock timeout",
    "error.model_spec": "config.json, a safetensors header or the index is missing, malformed or "
    "inconsistent",
    "error.hub": "a Hugging Face Hub model cannot be read: repo or revision not found, gated, unreachable, "
    "not cached offline",
    "error.no_candidate": "no branch of a Hub repo holds an EXL2 model that can be planned",
    "error.adapter": "a LoRA adapter directory cannot be read (no adapter_config.json, no weights, a bad "
    "rank)",
    "error.refused": "what loads beside the model cannot work with it (see the more precise codes below)",
    "error.draft_refused": "a draft model that cannot draft for this model (another vocabulary, not "
    "smaller, a cache that cannot match)",
    "error.tp_refused": "tensor parallelism cannot run this model here (one GPU, an architecture or "
    "attention backend exllamav2's TP path does not support, adapters)",
    "error.lora_refused": "a LoRA adapter ExLlamaV2Lora cannot load on this model (another base model, DoRA, "
    "unsupported targets or dtypes)",
    "error.profile": "a profile file does not parse or fails validation",
    "error.settings": "a settings value exllamav2 cannot run",
    "error.facts": "a facts document (detect --json) does not parse or has another schema",
    "error.probe": "the target interpreter cannot run the probe at all",
    "error.does_not_fit": "the model cannot fit at any context with the constraints given",
    "error.backend_refused": "a forced backend is invalid on this machine",
    "error.stale_profile": "the profile no longer matches the machine, the libraries or the model",
    "error.loader": "exllamav2 cannot run the profile in this process",
    "error.interrupted": "interrupted (Ctrl-C) or aborted",
    "error.internal": "a bug in exlx-autocfg (please report it with EXLX_DEBUG=1 output)",
}

ERROR_SCHEMA = 1  # of the JSON error document


class ExlxError(Exception):
    """An expected failure with a one-line, user-facing message and a stable `code`."""

    exit_code = EXIT_USAGE
    code = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        return f"{text} ({' '.join(self.hint.split())})" if self.hint else text

    def cli_line(self) -> str:
        """The line the CLI prints (options named as flags where the error names one)."""
        return self.one_line()


class UsageError(ExlxError):
    """Arguments that make no sense together, an unknown GPU name, an unknown option value."""

    code = "error.usage"


class OptionError(UsageError):
    """One option has a value it cannot take. The message names it the way the caller spelled it: the
    keyword argument from Python (`plan(context=-1)`: "context=-1: ..."), the flag from the CLI
    ("--context -1: ..."): `cli_line()`. `option` is the keyword name (`chunk_size`)."""

    code = "error.option"

    def __init__(self, option: str, value: Any, problem: str, *, hint: str | None = None,
                 flag: str | None = None) -> None:
        self.option, self.value, self.problem = option, value, problem
        self.flag = flag or "--" + option.replace("_", "-")
        import reprlib

        super().__init__(f"{option}={reprlib.repr(value)}: {problem}", hint=hint)

    def cli_line(self) -> str:
        import shlex

        shown = shlex.quote(str(self.value))
        return ExlxError(f"{self.flag} {shown}: {self.problem}", hint=self.hint).one_line()


class InputError(ExlxError):
    """A file the user gave us is unreadable or malformed (config.json, safetensors header, profile)."""

    code = "error.input"


class SpecialFileError(InputError):
    """A path that must be a regular file is not one (FIFO, device, socket, directory): refused by its
    type, before anything opens it, so a FIFO cannot hang a command."""

    code = "error.input.special_file"


class OutputError(ExlxError):
    """An output target is refused (a device, FIFO or socket; a directory where a file is needed) or the
    write failed; the target is untouched either way."""

    code = "error.output"


class OutputLockedError(OutputError):
    code = "error.output.locked"


class ModelSpecError(InputError):
    """config.json or a safetensors header is missing, malformed or inconsistent."""

    code = "error.model_spec"


class HubError(InputError):
    """A Hugging Face Hub model cannot be read: repo or revision not found, gated, unreachable, not cached."""

    code = "error.hub"


class NoCandidateError(ExlxError):
    """No branch of a Hub repo holds an EXL2 model that can be planned (a negative answer)."""

    exit_code = EXIT_NEGATIVE
    code = "error.no_candidate"


class RefusedError(UsageError):
    """What loads beside the model cannot work with it; the message carries the coded finding's text and
    `findings` the findings themselves (`code` tells draft, tensor parallelism and adapters apart)."""

    code = "error.refused"

    def __init__(self, message: str, findings: list[Any] | None = None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.findings = list(findings or [])


class DraftRefusedError(RefusedError):
    code = "error.draft_refused"


class TensorParallelRefusedError(RefusedError):
    code = "error.tp_refused"


class LoraRefusedError(RefusedError):
    code = "error.lora_refused"


class ProfileError(InputError):
    """A profile file does not parse or fails validation."""

    code = "error.profile"


class FactsError(InputError):
    """A facts document does not parse, has another schema, or a field of the wrong type."""

    code = "error.facts"


class ProbeError(ExlxError):
    """The target interpreter cannot run the probe at all."""

    code = "error.probe"


class DoesNotFitError(ExlxError):
    """The model cannot fit at any context with the constraints given."""

    exit_code = EXIT_NEGATIVE
    code = "error.does_not_fit"


class BackendRefusedError(UsageError):
    """The user forced a backend that is invalid on this machine; the message carries the reasons."""

    code = "error.backend_refused"


class StaleProfileError(ExlxError):
    """The profile no longer matches the machine, the libraries or the model."""

    exit_code = EXIT_NEGATIVE
    code = "error.stale_profile"


def error_document(code: str, message: str, exit_code: int, hint: str | None = None) -> dict[str, Any]:
    """The JSON document a `--json` command prints on stdout when it fails (docs/errors.md)."""
    if code not in ERROR_CODES:
        raise ValueError(f"unregistered error code {code!r} (add it to exlx_autocfg.errors.ERROR_CODES)")
    return {"schema": ERROR_SCHEMA, "error": {"code": code, "message": message, "exit_code": exit_code,
                                              "hint": hint}}
