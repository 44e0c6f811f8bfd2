"""The Triton Python-backend model: runs inside the server's model instances (each repository's `1/model.py`
imports it), opens the artifact's Session and answers requests with the handlers.

Tensors cross the stub by DLPack, both ways: the stub of tritonserver 2.51 was built against numpy 1, and under
numpy 2 its `as_numpy()` reads wrong values and `Tensor(name, array)` sends empty outputs (seen here), while
`np.from_dlpack` and `Tensor.from_dlpack` copy the bytes as they are with either numpy.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

from ..errors import TrtformerError
from ..runtime.session import Session
from .handlers import HANDLERS
from .models import STREAMER


def _error(exc: Exception) -> pb_utils.TritonError:
    """A user's error is INVALID_ARG (HTTP 400) with trtformer's one line; anything else is INTERNAL."""
    if isinstance(exc, TrtformerError):
        return pb_utils.TritonError(exc.one_line(), pb_utils.TritonError.INVALID_ARG)
    return pb_utils.TritonError(f"internal error: {type(exc).__name__}: {exc}", pb_utils.TritonError.INTERNAL)


def _quiet_consumed_capsules(previous):
    """The stub marks a DLPack capsule it took as "used_dlpack", where the protocol says "used_dltensor"; numpy's
    capsule destructor then reports a ValueError nobody can catch, one per output tensor. The tensor is the
    stub's by then (it frees it), so that report alone is dropped."""

    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, ValueError) and "PyCapsule_GetPointer" in str(unraisable.exc_value)):
            previous(unraisable)

    return hook


sys.unraisablehook = _quiet_consumed_capsules(sys.unraisablehook)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.kind = params["kind"]
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        self.session = Session.open(params["artifact"], backend=params["backend"], graph=params["graph"] or None,
                                    **json.loads(params["options"]))
        self.handler = HANDLERS[self.kind](self.session)
        self.log = pb_utils.Logger

    def _read(self, request) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                feeds[name] = np.array(np.from_dlpack(tensor))  # a copy: the request's memory goes with it
        return feeds

    def _response(self, result) -> pb_utils.InferenceResponse:
        if isinstance(result, Exception):
            return pb_utils.InferenceResponse(output_tensors=[], error=_error(result))
        tensors = [pb_utils.Tensor.from_dlpack(n, np.ascontiguousarray(result[n])) for n in self.outputs]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        if self.kind == STREAMER:
            for request in requests:
                self._stream(request)
            return None
        feeds, responses = [], {}
        for i, request in enumerate(requests):
            try:
                feeds.append((i, self._read(request)))
            except Exception as exc:  # a tensor the stub cannot hand over; this request only
                responses[i] = self._response(exc)
        try:
            results = self.handler([f for _, f in feeds])
        except Exception as exc:  # a fault of ours, not of a request: every request of the batch gets it
            self.log.log_error(f"trtformer: {type(exc).__name__}: {exc}")
            results = [exc] * len(feeds)
        for (i, _), result in zip(feeds, results, strict=True):
            responses[i] = self._response(result)
        return [responses[i] for i in range(len(requests))]

    def _stream(self, request) -> None:
        sender = request.get_response_sender()

        def emit(token: int) -> None:
            sender.send(self._response({"output_ids": np.array([token], np.int64)}))

        try:
            self.handler.stream(self._read(request), emit)
        except Exception as exc:
            sender.send(self._response(exc), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        self.session.close()
