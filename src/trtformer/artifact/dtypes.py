"""The one dtype table: how each tensor type is spelled by manifests, numpy, torch, ONNX and TensorRT.

Manifests name dtypes as numpy and torch do ("float32"). Every other spelling is a column here, so the exporter,
the runtime, the engine builder and the plugins cannot disagree on one. Nothing here imports torch, onnx or
TensorRT: the ONNX enum values are plain ints (onnx.TensorProto's), TensorRT's are DataType member names.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ArtifactError


@dataclass(frozen=True)
class DType:
    name: str  # manifest spelling, also torch's attribute name (torch.float32) and numpy's where numpy has it
    onnx: int  # onnx.TensorProto.DataType value
    onnx_type: str  # how ONNX op schemas name the tensor type
    trt: str  # tensorrt.DataType member name (the same in TensorRT and TensorRT-RTX)
    numpy: str | None  # numpy dtype name; None where numpy has no such type (bfloat16)
    floating: bool

    @property
    def host(self) -> str:
        """The numpy dtype a host copy takes: bfloat16 comes back as float32, which holds every bf16 value."""
        return self.numpy or "float32"


DTYPES: dict[str, DType] = {d.name: d for d in (
    DType("float32", 1, "tensor(float)", "FLOAT", "float32", True),
    DType("float16", 10, "tensor(float16)", "HALF", "float16", True),
    DType("bfloat16", 16, "tensor(bfloat16)", "BF16", None, True),
    DType("int64", 7, "tensor(int64)", "INT64", "int64", False),
    DType("int32", 6, "tensor(int32)", "INT32", "int32", False),
    DType("int8", 3, "tensor(int8)", "INT8", "int8", False),
    DType("uint8", 2, "tensor(uint8)", "UINT8", "uint8", False),
    DType("bool", 9, "tensor(bool)", "BOOL", "bool", False),
)}  # fmt: skip
_BY_TRT = {d.trt: d for d in DTYPES.values()}

# The precisions an export can have and the dtype of its low-precision tensors.
PRECISIONS: dict[str, str] = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def dtype(name: str) -> DType:
    """The entry of a manifest dtype name; an ArtifactError for a name no backend knows."""
    try:
        return DTYPES[name]
    except (KeyError, TypeError):
        raise ArtifactError(f"unknown tensor dtype {name!r}; known: {', '.join(DTYPES)}") from None


def from_trt(member: str) -> DType:
    """The entry of a TensorRT DataType member name (`engine.get_tensor_dtype(n).name`)."""
    try:
        return _BY_TRT[member]
    except KeyError:
        raise ArtifactError(f"TensorRT type {member} has no trtformer dtype; known: {', '.join(_BY_TRT)}") from None


def from_torch(torch_dtype) -> DType:
    """The entry of a torch.dtype, matched by name (torch is not imported here)."""
    return dtype(str(torch_dtype).removeprefix("torch."))
