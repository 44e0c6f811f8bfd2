"""What each artifact becomes on the server: one or two Triton models, their kind and their ports.

- encoder (stateless, token ids + padding mask: the BERT family, Longformer): the manifest's inputs and outputs
  with the batch axis left to Triton's dynamic batcher; requests of different lengths share a batch (ragged).
- generator (a KV cache: GPT): token ids of one prompt plus sampling parameters -> the generated ids; and a
  second, decoupled model `<name>_stream` that sends each token as it is produced (gRPC streaming).
- scorer (segment memory: Transformer-XL): one long sequence -> its log-likelihood and perplexity.

Only the artifact's manifest is read here: the parent process checks the artifacts and writes the configs
without opening a backend, and the server's model instances open the sessions.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..artifact import Artifact, GraphSpec
from ..artifact.dtypes import dtype
from ..errors import InputError
from .config import Port, tensor_dims, triton_type

ENCODER, GENERATOR, STREAMER, SCORER = "encoder", "generator", "generator-stream", "scorer"
STREAM_SUFFIX = "_stream"

# Encoder inputs a request may leave out, by role: the server fills them as `encode` does.
OPTIONAL_ROLES = ("padding-mask", "token-types", "global-mask")

# Generation parameters: input name -> (Triton type, GenerationConfig field). Each is optional, shape [1].
GENERATION_INPUTS = {
    "max_new_tokens": ("TYPE_INT32", "max_new_tokens"),
    "temperature": ("TYPE_FP32", "temperature"),
    "top_k": ("TYPE_INT32", "top_k"),
    "top_p": ("TYPE_FP32", "top_p"),
    "seed": ("TYPE_INT64", "seed"),
    "eos_token_id": ("TYPE_INT64", "eos_token_id"),
    "ignore_eos": ("TYPE_BOOL", "ignore_eos"),
}
SCORE_OUTPUTS = ("log_likelihood", "nll", "perplexity")  # FP64 [1] each, as `stream` computes them


@dataclass(frozen=True)
class ServedModel:
    name: str
    kind: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    batched: bool  # Triton's dynamic batcher groups requests (max_batch_size > 0)
    decoupled: bool = False  # responses stream, any number per request (gRPC streaming only)


def kind_of(graph: GraphSpec) -> str:
    """The serving kind of a graph, or an InputError saying why the server cannot serve it."""
    kinds = graph.state_kinds
    ids, mask = graph.role_input("ids"), graph.role_input("padding-mask")
    if kinds == {"kv-cache"} and ids is not None and mask is not None and "logits" in graph.output_names:
        return GENERATOR
    if kinds == {"memory"} and ids is not None:
        return SCORER
    if not kinds and ids is not None and mask is not None:
        unknown = [t.name for t in graph.inputs if t.role not in ("ids", *OPTIONAL_ROLES)]
        if not unknown:
            return ENCODER
        raise InputError(f"the server fills token ids, masks and token types; graph {graph.name} also takes {unknown}")
    raise InputError(f"graph {graph.name} is neither an encoder, a causal LM with a KV cache nor a model with "
                     "segment memory, so the server has no request format for it")  # fmt: skip


def served_models(artifact: Artifact, name: str, graph: str | None = None) -> list[ServedModel]:
    spec = artifact.graph(graph)
    kind = kind_of(spec)
    ids = Port("input_ids", triton_type(spec.role_input("ids").dtype), (-1,))
    if kind == ENCODER:
        inputs = tuple(Port(t.name, triton_type(t.dtype), tensor_dims(t.shape, batched=True),
                            optional=t.role in OPTIONAL_ROLES, ragged=True) for t in spec.inputs)
        outputs = tuple(Port(t.name, triton_type(dtype(t.dtype).host), tensor_dims(t.shape, batched=True))
                        for t in spec.outputs)
        return [ServedModel(name, ENCODER, inputs, outputs, batched=True)]
    if kind == GENERATOR:
        params = tuple(Port(n, t, (1,), optional=True) for n, (t, _) in GENERATION_INPUTS.items())
        outputs = (Port("output_ids", "TYPE_INT64", (-1,)),)
        return [ServedModel(name, GENERATOR, (ids, *params), (*outputs, Port("finished", "TYPE_BOOL", (1,))), False),
                ServedModel(name + STREAM_SUFFIX, STREAMER, (ids, *params), outputs, False, decoupled=True)]
    inputs = (ids, Port("seg_len", "TYPE_INT32", (1,), optional=True))
    outputs = (*(Port(n, "TYPE_FP64", (1,)) for n in SCORE_OUTPUTS), Port("scored", "TYPE_INT64", (1,)))
    return [ServedModel(name, SCORER, inputs, outputs, batched=False)]
