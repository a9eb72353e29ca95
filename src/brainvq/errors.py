"""Errors that reach the user as one line (see ``brainvq.cli.main``)."""


class BrainVQError(Exception):
    """A user-facing error: its message is one line that names the file or parameter at fault."""

    exit_code = 2


class DataError(BrainVQError):
    """Bad or missing input data (folder layout, unreadable image)."""


class ConfigError(BrainVQError):
    """A bad parameter value."""


class RunError(BrainVQError):
    """An MLflow run that is missing, of the wrong kind, or incompatible with another stage."""


class ModelFileError(BrainVQError):
    """A checkpoint or ONNX file that is missing, truncated, tampered with or mismatched."""


class TrainingDiverged(BrainVQError):
    """Loss became NaN/Inf; the last good checkpoint is kept."""


class TrackingError(BrainVQError):
    """The MLflow tracking store (server or database) is unreachable or refuses the connection."""


class RegistryError(BrainVQError):
    """A model could not be registered (nothing is left half-registered)."""


class StepFailed(BrainVQError):
    """A pipeline step's own run ended FAILED; the message carries the step's one-line error."""


MESSAGE_LIMIT = 200  # characters of a foreign exception's message kept in a one-line error


def one_line(exc: BaseException | str, limit: int | None = MESSAGE_LIMIT) -> str:
    """The one way a message is put on one line: whitespace (newlines included) collapsed, cut to ``limit``
    characters with an ellipsis; an exception without a message gives its type's name."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"
