"""The request logic of each served kind, on numpy arrays and a Session: no Triton here, so it runs (and is
tested) the same inside the server's model instances and in-process.

A handler takes the requests of one batch (dicts of input name -> array, as the client sent them) and returns one
result per request: a dict of output arrays, or the TrtformerError that request caused. One bad request never
fails the others of its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields

import numpy as np

from ..errors import InputError, TrtformerError
from ..runtime.encode import default_global_mask, encode
from ..runtime.generate import GenerationConfig, generate
from ..runtime.session import Session
from ..runtime.stream import log_likelihood
from .models import ENCODER, GENERATION_INPUTS, GENERATOR, SCORER, STREAMER

Request = Mapping[str, np.ndarray]
Result = dict[str, np.ndarray] | TrtformerError


def _scalar(request: Request, name: str, cast: Callable):
    array = request[name]
    if array.size != 1:
        raise InputError(f"{name} takes one value, got shape {list(array.shape)}")
    return cast(array.reshape(-1)[0].item())


def _token_row(request: Request, name: str = "input_ids") -> list[int]:
    ids = np.asarray(request[name])
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.size == 0:
        raise InputError(f"{name} must be one sequence of token ids [n >= 1], got shape {list(ids.shape)}")
    return ids.tolist()


class Encoder:
    """Requests of any lengths in one padded batch through `encode`; each response cut back to its request's
    length, so a response equals `encode` of that request alone."""

    def __init__(self, session: Session):
        self.session = session
        graph = session.graph
        self.side = graph.padding_side
        self.ids = graph.role_input("ids").name
        self.mask = graph.role_input("padding-mask").name
        self.types = getattr(graph.role_input("token-types"), "name", None)
        self.glob = getattr(graph.role_input("global-mask"), "name", None)

    def __call__(self, requests: list[Request]) -> list[Result]:
        parsed: list = []
        for request in requests:
            try:
                parsed.append(self._rows(request))
            except TrtformerError as exc:
                parsed.append(exc)
        good = [i for i, p in enumerate(parsed) if not isinstance(p, TrtformerError)]
        try:
            outputs = self._encode([parsed[i] for i in good])
        except TrtformerError:
            # One request of the batch is bad in a way only the session sees (ids out of range, too long):
            # run each alone so that only that one gets the error.
            outputs = [self._encode_alone(parsed[i]) for i in good]
        for i, out in zip(good, outputs, strict=True):
            parsed[i] = out
        return parsed

    def _encode_alone(self, rows) -> Result:
        try:
            return self._encode([rows])[0]
        except TrtformerError as exc:
            return exc

    def _rows(self, request: Request) -> dict:
        """A request's arrays -> its unpadded rows (the mask says which positions are real) and its width."""
        ids = np.asarray(request[self.ids])
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise InputError(f"{self.ids} must be [batch, seq >= 1] token ids, got shape {list(ids.shape)}")
        mask = request.get(self.mask)
        mask = np.ones_like(ids) if mask is None else np.asarray(mask)
        for name in (self.mask, self.types, self.glob):
            if name in request and np.shape(request[name]) != ids.shape:
                raise InputError(f"{name} has shape {list(np.shape(request[name]))}, {self.ids} {list(ids.shape)}; they must match")
        lengths = mask.astype(bool).sum(1)
        keep = np.arange(ids.shape[1]) < lengths[:, None]
        keep = keep[:, ::-1] if self.side == "left" else keep
        if not np.array_equal(keep, mask.astype(bool)):
            raise InputError(f"{self.mask} must mark real tokens with 1 and padding with 0, padding on the {self.side}")
        if not lengths.all():
            raise InputError(f"row {int(np.argmin(lengths))} of {self.mask} has no real token")

        def rows(name):
            return None if name not in request else [r[k].tolist() for r, k in zip(request[name], keep, strict=True)]

        return {"ids": rows(self.ids), "types": rows(self.types), "glob": rows(self.glob), "width": ids.shape[1]}

    def _encode(self, parsed: list[dict]) -> list[dict[str, np.ndarray]]:
        if not parsed:
            return []
        ids = [r for p in parsed for r in p["ids"]]
        types = glob = None
        if any(p["types"] is not None for p in parsed):  # a request without them gets encode's default: zeros
            types = [r for p in parsed for r in (p["types"] or [[0] * len(row) for row in p["ids"]])]
        if any(p["glob"] is not None for p in parsed):  # ... and its head's default global tokens
            config = self.session.config
            glob = [r for p in parsed for r in (p["glob"] or [default_global_mask(config, np.array([row]))[0].tolist()
                                                              for row in p["ids"]])]
        result = encode(self.session, ids, types, batch_size=len(ids), global_attention_mask=glob)
        out, start = [], 0
        for p in parsed:
            rows = slice(start, start + len(p["ids"]))
            start = rows.stop
            out.append({name: self._fit(name, array[rows], p["width"]) for name, array in result.outputs.items()})
        return out

    def _fit(self, name: str, array: np.ndarray, width: int) -> np.ndarray:
        """An output's sequence axis padded or cut to the request's own width, on the padding side."""
        axis = self.session.graph.sequence_axis(self.session.outputs[name])
        if axis is None:
            return np.ascontiguousarray(array)
        have = array.shape[axis]
        index = [slice(None)] * array.ndim
        index[axis] = slice(have - min(have, width), have) if self.side == "left" else slice(0, min(have, width))
        array = array[tuple(index)]
        pad = [(0, 0)] * array.ndim
        pad[axis] = (width - array.shape[axis], 0) if self.side == "left" else (0, width - array.shape[axis])
        return np.ascontiguousarray(np.pad(array, pad))


def generation_config(request: Request) -> GenerationConfig:
    """The sampling parameters a request gives (each optional) over GenerationConfig's defaults."""
    types = {f.name: f.type for f in fields(GenerationConfig)}
    cfg = GenerationConfig()
    for name, (_, field) in GENERATION_INPUTS.items():
        if name in request:
            cast = {"int": int, "float": float, "bool": bool}[types[field].split(" ")[0]]
            setattr(cfg, field, _scalar(request, name, cast))
    return cfg


class OneAtATime:
    """Requests run one after another (each is a whole generation or sequence), each to its result or its error."""

    def __init__(self, session: Session):
        self.session = session

    def __call__(self, requests: list[Request]) -> list[Result]:
        results = []
        for request in requests:
            try:
                results.append(self.one(request))
            except TrtformerError as exc:
                results.append(exc)
        return results

    def one(self, request: Request) -> dict[str, np.ndarray]:
        raise NotImplementedError


class Generator(OneAtATime):
    """One prompt per request through `generate`; the generated ids (eos included when it stopped there)."""

    def one(self, request: Request) -> dict[str, np.ndarray]:
        result = generate(self.session, [_token_row(request)], generation_config(request))
        return {"output_ids": np.array(result.tokens[0], np.int64), "finished": np.array(result.finished[:1])}

    def stream(self, request: Request, emit: Callable[[int], None]) -> None:
        """Call `emit(token)` for each new token as soon as it is known. `generate` drives a tap on the session:
        every decode step is fed the token the step before produced, and the last token is the result's."""
        result = generate(_Tap(self.session, emit), [_token_row(request)], generation_config(request))
        emit(result.tokens[0][-1])


class _Tap:
    """A Session seen through: each decode step's input token (the one just generated) goes to `emit` first."""

    def __init__(self, session: Session, emit: Callable[[int], None]):
        self._session, self._emit = session, emit
        self._ids = session.graph.role_input("ids").name

    def __getattr__(self, name):
        return getattr(self._session, name)

    def step(self, feeds, state=None, fetch=None):
        if state is not None:
            self._emit(int(feeds[self._ids][0, -1]))
        return self._session.step(feeds, state, fetch=fetch)


class Scorer(OneAtATime):
    """One long sequence per request through `log_likelihood` (segments with the memory carried)."""

    def one(self, request: Request) -> dict[str, np.ndarray]:
        seg_len = _scalar(request, "seg_len", int) if "seg_len" in request else None
        result = log_likelihood(self.session, _token_row(request), seg_len)
        return {"log_likelihood": np.array([result.total_log_prob]), "nll": np.array([result.nll]),
                "perplexity": np.array([result.perplexity]), "scored": np.array([result.scored], np.int64)}


HANDLERS = {ENCODER: Encoder, GENERATOR: Generator, STREAMER: Generator, SCORER: Scorer}
