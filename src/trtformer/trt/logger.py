"""TensorRT's messages to logging: errors kept for the exception that follows, known-benign warnings at DEBUG."""

from __future__ import annotations

import functools
import logging
from collections import deque

trt_log = logging.getLogger("trtformer.engines.trt")  # the name builds have always logged TensorRT's messages under

# TensorRT warnings that every build of these graphs raises and that need no action: int64 inputs (token ids,
# masks) bind as int64, a derived dim's max corner is clamped below the sum of its parts (see engines/profiles.py),
# and a local function inlined once per call repeats its node names (the plugin form).
BENIGN_WARNINGS = ("has Int64 binding", "Profile kMAX values are not self-consistent",
                   "the output tensors of this new instance will not be queryable")  # fmt: skip
KEPT_ERRORS = 64  # the most recent errors a logger keeps for messages


@functools.cache
def make_logger(trt):
    """The process's trt.ILogger for one TensorRT module: it forwards to logging and keeps the recent errors.

    One per module, because TensorRT keeps the first logger it is given while any builder or runtime lives and
    ignores later ones: a second logger would never see the errors of the build it was made for. Callers take
    `mark()` before their work and read `last_errors(since=mark)` after, so another build's errors stay out."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: deque[tuple[int, str]] = deque(maxlen=KEPT_ERRORS)  # (sequence number, message)
            self.count = 0

        def log(self, severity, msg):
            S = trt.ILogger.Severity
            if severity in (S.INTERNAL_ERROR, S.ERROR):
                self.count += 1
                self.errors.append((self.count, msg))
                trt_log.debug("%s", msg)
            elif severity == S.WARNING:
                trt_log.log(logging.DEBUG if any(b in msg for b in BENIGN_WARNINGS) else logging.WARNING, "%s", msg)
            elif severity == S.INFO:
                trt_log.debug("%s", msg)

        def mark(self) -> int:
            """A position in the error sequence: `last_errors(since=mark)` reports only errors logged after it."""
            return self.count

        def last_errors(self, limit: int = 3, since: int = 0) -> str:
            """The last errors logged after `since`, joined, for an exception message."""
            recent = [msg for n, msg in self.errors if n > since]
            return " | ".join(recent[-limit:]) or "no message from TensorRT"

    return Logger()
