"""The error hierarchy. Every error a user can cause derives from TrtformerError and carries a hint.

The CLI prints `error: <message> (hint: <hint>)` and exits 2 for any of these; the library only raises.
"""

from __future__ import annotations


class TrtformerError(Exception):
    """Base of every error trtformer raises on purpose."""

    default_hint = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint if hint is not None else self.default_hint

    def one_line(self) -> str:
        text = str(self).replace("\n", " ")
        return f"{text} (hint: {self.hint})" if self.hint else text


class CheckpointError(TrtformerError):
    """A checkpoint directory or preset that cannot be loaded."""

    default_hint = "pass a Hugging Face checkpoint directory (config.json + weights) or a preset name"


class ArtifactError(TrtformerError):
    """An artifact directory that is missing, corrupt or from an incompatible schema."""

    default_hint = "re-export the artifact with `trtformer export`"


class ExportError(TrtformerError):
    """Export failed; nothing was written at the destination."""


class InputError(TrtformerError, ValueError):
    """Inputs that do not match what the model accepts (names, dtypes, shapes, ranges, state)."""

    default_hint = "see `trtformer info ARTIFACT` for the expected inputs"


class BackendError(TrtformerError):
    """An unknown backend, or one that cannot run on this machine."""


class EngineError(TrtformerError):
    """A TensorRT engine that cannot be built, or a stored one that does not match the artifact or toolkit."""

    default_hint = "rebuild it with `trtformer build ARTIFACT`"


class DependencyError(TrtformerError, ImportError):
    """An optional dependency that the chosen feature needs is not installed."""

    def __init__(self, package: str, extra: str, feature: str):
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed",
            hint=f"pip install 'trtformer[{extra}]'",
        )


def require(module: str, extra: str, feature: str):
    """Import an optional dependency or raise DependencyError naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DependencyError(module.split(".")[0], extra, feature) from exc
