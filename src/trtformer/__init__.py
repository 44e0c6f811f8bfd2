"""trtformer: transformer checkpoints to ONNX, ONNX Runtime and TensorRT, with parity against PyTorch.

`export` needs torch; `load` and everything under `trtformer.runtime` need only numpy and onnxruntime.
"""

from __future__ import annotations

__version__ = "0.1.0"


def export(source, out, **kwargs):
    """Export a checkpoint directory or preset to an artifact directory; see trtformer.exporter.export."""
    from .exporter.export import export as _export

    return _export(source, out, **kwargs)


def load(artifact, backend: str = "ort-cpu", **kwargs):
    """Open an artifact on a backend; returns a trtformer.runtime.Session."""
    from .runtime.session import Session

    return Session.open(artifact, backend=backend, **kwargs)


__all__ = ["__version__", "export", "load"]
