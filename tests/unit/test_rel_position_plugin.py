"""The plugin registry and the TensorRT plugin of trtformer::rel_position_attention.

Without TensorRT: names from the op's identity, shared with the exporter's translation, lazy imports, attribute (de)serialisation, output shape
arithmetic and the format rule. With full TensorRT (`trt`) and a GPU (`gpu`): the creator in TensorRT's registry and
an engine with the plugin layer against the eager op.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from support import heavy_modules_after
from test_rel_position_op import attrs, make_inputs

from trtformer.errors import DependencyError, EngineError
from trtformer.exporter.translations import ATTRIBUTE_TYPES, TRANSLATIONS
from trtformer.ops.identity import NAMESPACE, VERSION
from trtformer.ops.rel_position import IDENTITY, OP, reference
from trtformer.plugins import registry
from trtformer.plugins.rel_position import trt as plugin
from trtformer.runtime.backends.buffers import address

A = attrs(mem_len=6, same_length=True, clamp_len=3, pre_lnorm=True)
FIELDS = plugin.encode_attributes(A)


def test_plugin_and_translation_share_the_op_identity():
    p = registry.PLUGINS["RelPositionAttention"]
    assert p.identity is IDENTITY is TRANSLATIONS[OP].identity and IDENTITY.name == "trtformer::rel_position_attention"
    assert (p.name, p.namespace, p.version, p.op) == (TRANSLATIONS[OP].name, NAMESPACE, VERSION, OP)
    assert registry.plugin_for(OP) is p and p.load_trt() is plugin
    assert plugin.OUTPUTS == ("output", "new_mem") == tuple(o for o, _ in TRANSLATIONS[OP].outputs)
    node = TRANSLATIONS[OP].node_attributes(A)
    assert (node["plugin_namespace"], node["plugin_version"]) == ("trtformer", "1")


def test_the_plugins_import_neither_the_exporter_nor_the_engines():
    """Layering: plugins sit below the exporter, trtformer.trt and the engines (they take names from trtformer.ops)."""
    code = ("import sys, trtformer.plugins.registry, trtformer.plugins.trt_common, trtformer.plugins.rel_position.trt, "
            "trtformer.plugins.sliding_window.trt\n"
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in (['trtformer', 'exporter'], ['trtformer', 'trt'], "
            "['trtformer', 'engines'], ['trtformer', 'runtime'])))")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["[]"]


def test_imports_stay_lazy():
    assert heavy_modules_after("trtformer.plugins.registry", "trtformer.plugins.rel_position.trt") == []


def test_missing_triton_is_a_dependency_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton now raises ImportError
    with pytest.raises(DependencyError) as raised:
        registry.PLUGINS["RelPositionAttention"].load_triton()
    assert raised.value.hint == "pip install 'trtformer[triton]'"


def test_fields_match_the_plugin_node_attributes():
    node = TRANSLATIONS[OP].node_attributes(A)
    own = {k: v for k, v in node.items() if not k.startswith("plugin_")}
    assert [name for name, _ in plugin.FIELDS] == list(own)
    to_onnx = {np.int32: ATTRIBUTE_TYPES["int"], np.float32: ATTRIBUTE_TYPES["float"]}
    assert all(to_onnx[plugin.FIELD_DTYPES[kind]] == ATTRIBUTE_TYPES[kind] for _, kind in plugin.FIELDS)


def test_attribute_round_trip():
    fields = plugin.encode_attributes(A)
    assert all(v.shape == (1,) for v in fields.values())
    assert plugin.decode_attributes(fields) == {**A, "ln_eps": float(np.float32(A["ln_eps"]))}  # FLOAT32 field
    parsed = {k: v.astype(np.int64) if v.dtype == np.int32 else v for k, v in fields.items()}  # other int widths
    assert plugin.decode_attributes({**parsed, "plugin_namespace": b"trtformer"}) == plugin.decode_attributes(fields)
    with pytest.raises(EngineError, match="mem_len"):
        plugin.decode_attributes({k: v for k, v in fields.items() if k != "mem_len"})


@pytest.mark.parametrize(("qlen", "mlen", "mem_len"), [(3, 0, 5), (3, 4, 5), (2, 2, 0), (1, 7, 9), (4, 0, 2)])
def test_output_shapes_match_the_op(qlen, mlen, mem_len):
    x = make_inputs(qlen, mlen)
    out, new_mem = reference(**x, **attrs(mem_len=mem_len))
    want = [list(out.shape), list(new_mem.shape)]
    assert plugin.output_shapes(list(x["hidden"].shape), list(x["mems"].shape), mem_len) == want


def test_format_rule():
    f16, f32 = "float16", "float32"
    assert plugin.format_supported(0, [f16], True) and plugin.format_supported(0, [f32], True)
    assert not plugin.format_supported(0, [f16], False) and not plugin.format_supported(0, ["int32"], True)
    assert plugin.format_supported(1, [f16, f16], True) and not plugin.format_supported(1, [f16, f32], True)
    ln = plugin.LN_INPUTS[0]
    assert plugin.format_supported(ln, [f16] * ln + [f32], True)  # LayerNorm weights may stay fp32
    assert not plugin.format_supported(10, [f16] * 10 + [f32], True)  # the new memory has hidden's dtype


def test_the_plugin_form_refuses_bf16_before_writing_anything(tmp_path, capsys):
    """The plugins compute in fp32 and fp16, so a bf16 plugin form would export and then fail in every full-TensorRT
    build: it is refused up front, and the portable form named."""
    from trtformer.cli import main

    out = tmp_path / "xl"
    code = main(["export", "tiny-transfo-xl", "-o", str(out), "--form", "plugin", "--precision", "bf16"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not out.exists()
    assert "the plugin form of trtformer::rel_position_attention takes float32 and float16 tensors, and this model " \
           "gives it bfloat16" in err and "--form portable" in err


# ---------------------------------------------------------------------------------------------- TensorRT


def full_tensorrt():
    reason = "needs full TensorRT with plugin layers (pip install 'trtformer[tensorrt]')"
    trt = pytest.importorskip("tensorrt", reason=reason)
    if not hasattr(trt, "IPluginV3OneRuntime"):
        pytest.skip("needs TensorRT >= 10 (IPluginV3)")
    return trt


@pytest.mark.trt
def test_creator_registered_and_fields_round_trip():
    trt = full_tensorrt()
    pytest.importorskip("triton", reason="the plugin runs the Triton kernel (pip install 'trtformer[triton]')")
    p = registry.PLUGINS["RelPositionAttention"]
    creator = p.load_trt().register()
    assert trt.get_plugin_registry().get_creator(p.name, p.version, p.namespace) is not None
    made = creator.create_plugin(p.name, plugin.field_collection(trt, FIELDS), trt.TensorRTPhase.BUILD)
    assert plugin.decode_attributes({f.name: f.data for f in made.get_fields_to_serialize()}) == made.attrs


@pytest.mark.trt
@pytest.mark.gpu
def test_engine_with_plugin_matches_eager_op():
    trt = full_tensorrt()
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    p = registry.PLUGINS["RelPositionAttention"]
    creator = p.load_trt().register()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))  # TensorRT 11
    ex = make_inputs(5, 3)
    profile = builder.create_optimization_profile()
    tensors = []
    for name, value in ex.items():
        dynamic = name in ("hidden", "mems")  # time-first: dim 0 varies, qlen >= 1, mlen >= 0
        shape = (-1, *value.shape[1:]) if dynamic else tuple(value.shape)
        tensors.append(network.add_input(name, trt.float32, shape))
        if dynamic:
            lo = 1 if name == "hidden" else 0
            profile.set_shape(name, (lo, *value.shape[1:]), tuple(value.shape), (16, *value.shape[1:]))
    made = creator.create_plugin(p.name, plugin.field_collection(trt, FIELDS), trt.TensorRTPhase.BUILD)
    layer = network.add_plugin_v3(tensors, [], made)
    for i, name in enumerate(plugin.OUTPUTS):
        layer.get_output(i).name = name
        network.mark_output(layer.get_output(i))
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    context = engine.create_execution_context()
    # setTensorAddress needs a valid address for every input, an empty one included (mlen 0: data_ptr() is 0): bind
    # a placeholder as the tensorrt backend does.
    placeholder = torch.empty(256, dtype=torch.uint8, device="cuda")
    for qlen, mlen in [(5, 3), (1, 0), (9, 12)]:
        x = {k: v.cuda() for k, v in make_inputs(qlen, mlen, seed=qlen).items()}
        want = reference(**x, **A)
        got = [torch.empty_like(w) for w in want]
        for name, value in [*x.items(), *zip(plugin.OUTPUTS, got, strict=True)]:
            if name in x:
                context.set_input_shape(name, tuple(value.shape))
            context.set_tensor_address(name, address(value, placeholder))
        assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        assert all((g - w).abs().max() <= 1e-5 for g, w in zip(got, want, strict=True))
