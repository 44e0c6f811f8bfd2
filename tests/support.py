"""Helpers shared by tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def run_interpreted(script: str) -> dict:
    """Run a Triton test file as a script under TRITON_INTERPRET=1 and return the JSON its last line prints.

    Triton reads the variable when a kernel is decorated, i.e. at import, so the kernels run in a child process:
    setting it in the pytest process would be too late once anything had imported them, and could not be undone.
    """
    import os
    import subprocess
    import sys

    import pytest

    pytest.importorskip("triton", reason="Triton is not installed (pip install 'trtformer[triton]')")
    # The child runs the file as a script: tests/ (this module's folder) goes on its path as pytest puts it on ours.
    path = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def heavy_modules_after(*modules: str) -> list[str]:
    """Which of triton, tensorrt and tensorrt_rtx a fresh interpreter has imported after importing `modules`."""
    import subprocess
    import sys

    code = (f"import sys, {', '.join(modules)}; "
            "print(sorted(m for m in ('triton', 'tensorrt', 'tensorrt_rtx') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().replace("'", '"'))


def kernel_error(out, want) -> dict:
    """A Triton kernel's output against the eager reference: largest error, the reference's scale (tolerances are
    relative to it above 1) and the output dtype."""
    return {"max_abs": (out.double() - want.double()).abs().max().item(), "scale": want.double().abs().max().item(),
            "dtype": str(out.dtype)}


def as_on_cuda(block_sizes):
    """A kernel module's `block_sizes(d, dtype, device)` answering as for a CUDA device, so the interpreter runs the
    tiles a GPU would get."""
    import torch

    return lambda d, dtype, _device: block_sizes(d, dtype, torch.device("cuda"))


def has_cuda_kernel(op: str) -> bool:
    """Whether custom op `op` ("namespace::name") has a kernel registered for CUDA tensors."""
    import torch

    return torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")
