"""TensorRT's messages to logging: errors kept for the exception that follows, known-benign warnings at DEBUG."""

from __future__ import annotations

import logging

trt_log = logging.getLogger("trtformer.engines.trt")  # the name builds have always logged TensorRT's messages under

# TensorRT warnings that every build of these graphs raises and that need no action: int64 inputs (token ids,
# masks) bind as int64, a derived dim's max corner is clamped below the sum of its parts (see engines/profiles.py),
# and a local function inlined once per call repeats its node names (the plugin form).
BENIGN_WARNINGS = ("has Int64 binding", "Profile kMAX values are not self-consistent",
                   "the output tensors of this new instance will not be queryable")  # fmt: skip


def make_logger(trt):
    """A trt.ILogger that forwards to logging and keeps the errors (`.errors`) for the exception message."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            S = trt.ILogger.Severity
            if severity in (S.INTERNAL_ERROR, S.ERROR):
                self.errors.append(msg)
                trt_log.debug("%s", msg)
            elif severity == S.WARNING:
                trt_log.log(logging.DEBUG if any(b in msg for b in BENIGN_WARNINGS) else logging.WARNING, "%s", msg)
            elif severity == S.INFO:
                trt_log.debug("%s", msg)

        def last_errors(self, limit: int = 3) -> str:
            """The last errors, joined, for an exception message."""
            return " | ".join(self.errors[-limit:]) or "no message from TensorRT"

    return Logger()
