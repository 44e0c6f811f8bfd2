"""The TensorRT plugin of trtformer::sliding_window_attention (and the coding trt_common shares with rel_position).

Without TensorRT: names from the op's identity, shared with the exporter's translation, lazy imports, attribute (de)serialisation with the int[]
dilations, output shapes, the format rule. With full TensorRT (`trt`) and a GPU (`gpu`): the creators in TensorRT's
registry and an engine with the plugin layer against the eager op.
"""

from __future__ import annotations

import enum
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from support import heavy_modules_after
from test_rel_position_plugin import full_tensorrt  # tensorrt with IPluginV3, or a skip
from test_sliding_window_triton import Case

from trtformer.errors import DependencyError, EngineError
from trtformer.exporter.translations import ATTRIBUTE_TYPES, TRANSLATIONS
from trtformer.ops.identity import NAMESPACE, VERSION
from trtformer.ops.sliding_window import IDENTITY, OP, sliding_window_reference
from trtformer.plugins import registry, trt_common
from trtformer.plugins.sliding_window import trt as plugin

A = {"window": 8, "dilations": [1, 2, 3, 1], "scale": 0.35}
FIELDS = plugin.encode_attributes(A)
NAME = "SlidingWindowAttention"


def test_plugin_and_translation_share_the_op_identity():
    p = registry.PLUGINS[NAME]
    assert p.identity is IDENTITY is TRANSLATIONS[OP].identity and plugin.OUTPUTS == ("output",)
    assert (p.name, p.namespace, p.version, p.op) == (TRANSLATIONS[OP].name, NAMESPACE, VERSION, OP)
    assert TRANSLATIONS[OP].node_attributes(A)["plugin_name"] == p.name  # what variant op types point to
    assert registry.plugin_for(OP) is p and p.load_trt() is plugin
    assert set(registry.PLUGINS) == {"RelPositionAttention", NAME}


def test_imports_stay_lazy():
    assert heavy_modules_after("trtformer.plugins.registry", "trtformer.plugins.trt_common", "trtformer.plugins.sliding_window.trt") == []


def test_missing_triton_or_tensorrt_is_a_dependency_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton now raises ImportError
    with pytest.raises(DependencyError) as raised:
        registry.PLUGINS[NAME].load_triton()
    assert raised.value.hint == "pip install 'trtformer[triton]'"
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DependencyError, match=NAME):
        plugin.register()


def test_fields_match_the_plugin_node_attributes():
    node = TRANSLATIONS[OP].node_attributes(A)
    own = {k: v for k, v in node.items() if not k.startswith("plugin_")}
    assert [name for name, _ in plugin.FIELDS] == list(own) == ["window", "dilations", "scale"]
    to_onnx = {(np.int32, False): ATTRIBUTE_TYPES["int"], (np.int32, True): ATTRIBUTE_TYPES["int[]"],
               (np.float32, False): ATTRIBUTE_TYPES["float"]}  # fmt: skip
    for _, kind in plugin.FIELDS:
        assert to_onnx[(trt_common.FIELD_DTYPES[kind], trt_common.is_list(kind))] == ATTRIBUTE_TYPES[kind]


def test_attribute_round_trip_with_dilations():
    assert {k: (v.dtype, v.shape) for k, v in FIELDS.items()} == {
        "window": (np.int32, (1,)), "dilations": (np.int32, (4,)), "scale": (np.float32, (1,))}  # fmt: skip
    decoded = plugin.decode_attributes(FIELDS)
    assert decoded == {**A, "scale": float(np.float32(A["scale"]))}  # FLOAT32 field
    assert type(decoded["dilations"]) is list and all(type(d) is int for d in decoded["dilations"])
    parsed = {k: v.astype(np.int64) if v.dtype == np.int32 else v for k, v in FIELDS.items()}  # other int widths
    assert plugin.decode_attributes({**parsed, "plugin_name": b"SlidingWindowAttention"}) == decoded
    one_head = plugin.encode_attributes({**A, "dilations": [2]})
    assert plugin.decode_attributes(one_head)["dilations"] == [2]  # a 1-element array stays a list
    with pytest.raises(EngineError, match="dilations"):
        plugin.decode_attributes({k: v for k, v in FIELDS.items() if k != "dilations"})


@pytest.mark.parametrize(
    "case", [Case(2, 9, 4, (1, 2, 1, 1)), Case(1, 1, 8, (3,)), Case(3, 20, 2, (1, 2), head_dim=12)]
)
def test_output_shape_matches_the_op(case):
    x, a = case.inputs()
    want = [list(sliding_window_reference(*x, **a).shape)]
    dims = [list(t.shape) for t in x]
    assert plugin.output_shapes(dims[plugin.V]) == want
    assert plugin.SPEC.output_shapes(dims, a, trt_common.INT_OPS) == want  # what get_output_shapes evaluates


def test_format_rule():
    f16, f32 = "float16", "float32"
    ok = plugin.format_supported
    assert ok(0, [f16], True) and ok(0, [f32], True)
    assert not ok(0, [f16], False) and not ok(0, ["int32"], True) and not ok(0, ["bfloat16"], True)
    assert ok(5, [f16] * 6, True) and not ok(3, [f16, f16, f16, f32], True)  # one dtype for the activations
    for mask in ("int32", "int64", f32, f16):  # the masks: any of these, each on its own
        assert ok(6, [f16] * 6 + [mask], True) and ok(7, [f32] * 6 + ["int32", mask], True)
    for mask in ("bool", "uint8", "int8"):  # TensorRT plugins take no BOOL or UINT8 (PluginTensorDesc::type)
        assert not ok(6, [f16] * 6 + [mask], True) and not ok(7, [f16] * 6 + ["int32", mask], True)
    assert not ok(7, [f16] * 6 + ["int32", "int32"], False)
    assert ok(8, [f16] * 6 + ["int32", "int64", f16], True)  # the output: the activations' dtype
    assert not ok(8, [f16] * 6 + ["int32", "int32", f32], True)
    assert plugin.MASKS == (6, 7) and plugin.V == 2


# ---------------------------------------------------------------------------------------------- stand-in TensorRT


@pytest.fixture
def fake_trt(monkeypatch):
    """A stand-in `tensorrt` with what trt_common's classes touch outside enqueue: they are built, registered and
    queried here without TensorRT (the real API is checked by the `trt` tests). The class cache is cleared after."""
    base = type("Base", (), {"__init__": lambda self: None})
    trt = SimpleNamespace(**{n: type(n, (base,), {}) for n in ("IPluginV3", "IPluginV3OneCore", "IPluginV3OneBuild",
                                                                 "IPluginV3OneRuntime", "IPluginCreatorV3One")})  # fmt: skip
    trt.DataType = enum.Enum("DataType", "FLOAT HALF BOOL INT32 INT64 INT8")
    trt.TensorFormat = enum.Enum("TensorFormat", "LINEAR CHW32")
    trt.PluginFieldType = enum.Enum("PluginFieldType", "INT32 FLOAT32")
    trt.DimensionOperation = enum.Enum("DimensionOperation", "SUM MIN")
    trt.PluginField = lambda name, data, type: SimpleNamespace(name=name, data=data, type=type)
    trt.PluginFieldCollection, trt.DimsExprs = list, lambda n: [None] * n
    trt.registered = {}
    trt.get_plugin_registry = lambda: SimpleNamespace(
        register_creator=lambda c, ns: trt.registered.setdefault((ns, c.name), c)
    )
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_common, "_REGISTERED", {})
    trt_common.plugin_classes.cache_clear()
    yield trt
    trt_common.plugin_classes.cache_clear()


def test_plugin_classes_with_a_stand_in_tensorrt(fake_trt):
    pytest.importorskip("triton", reason="the plugin runs the Triton kernel (pip install 'trtformer[triton]')")
    trt, op_type = fake_trt, f"{NAME}_w8_d1_2_3_1"
    creator = plugin.register([op_type])
    assert set(trt.registered) == {("trtformer", NAME), ("trtformer", op_type)} and creator.name == NAME
    assert [(f.name, f.type.name) for f in creator.field_names] == [("window", "INT32"), ("dilations", "INT32"),
                                                                    ("scale", "FLOAT32")]  # fmt: skip
    made = trt.registered[("trtformer", op_type)].create_plugin("layer", plugin.field_collection(trt, FIELDS), None)
    assert made.plugin_name == op_type and made.clone().attrs == made.attrs == plugin.decode_attributes(FIELDS)
    assert {f.name: list(f.data) for f in made.get_fields_to_serialize()} == {k: list(v) for k, v in FIELDS.items()}
    expr = SimpleNamespace(constant=lambda c: c, operation=lambda op, a, b: (op.name, a, b))
    assert made.get_output_shapes([["b", 4, "n", 8]] * 6 + [["b", "n"]] * 2, [], expr) == [["b", 4, "n", 8]]
    io = [SimpleNamespace(desc=SimpleNamespace(type=trt.DataType[t], format=trt.TensorFormat.LINEAR))
          for t in ["HALF"] * 6 + ["INT32", "INT32", "HALF"]]  # fmt: skip
    assert all(made.supports_format_combination(i, io, 8) for i in range(9))
    io[6].desc.type = trt.DataType.BOOL  # what the exporter gave the plugin before it cast the masks
    assert not made.supports_format_combination(6, io, 8)
    assert made.get_output_data_types([trt.DataType.HALF] * 8) == [trt.DataType.HALF]


def test_the_plugin_holds_what_tensorrt_reads_after_a_call(fake_trt):
    """get_fields_to_serialize's PluginFields point into arrays the plugin keeps (TensorRT reads them after the call
    returns), and the device copy enqueue needs is made beforehand by `prepare` (enqueue may be captured)."""
    pytest.importorskip("triton", reason="the plugin runs the Triton kernel (pip install 'trtformer[triton]')")
    from trtformer.plugins.sliding_window import triton as kernels

    creator = plugin.register()
    assert all(f.data is creator.declared[f.name] for f in creator.field_names)
    made = creator.create_plugin(NAME, plugin.field_collection(fake_trt, FIELDS), None)
    served = made.get_fields_to_serialize()
    assert served is made.serialized and all(f.data is made.fields[f.name] for f in served)
    assert getattr(kernels, plugin.SPEC.prepare) is kernels.prepare
    kernels._dilation_tensor.cache_clear()
    kernels.prepare(A, torch.device("cpu"))
    made_before = kernels._dilation_tensor(tuple(A["dilations"]), torch.device("cpu"))
    assert kernels._dilation_tensor.cache_info().hits == 1 and made_before.tolist() == A["dilations"]


# ---------------------------------------------------------------------------------------------- TensorRT


@pytest.mark.trt
def test_creators_registered_and_fields_round_trip():
    trt = full_tensorrt()
    pytest.importorskip("triton", reason="the plugin runs the Triton kernel (pip install 'trtformer[triton]')")
    p = registry.PLUGINS[NAME]
    op_type = f"{NAME}_w8_d1_2_3_1"  # a plugin-form node's op type (translations.sliding_window_variant)
    creator = p.load_trt().register([op_type])
    assert creator.name == NAME and plugin.register([op_type]) is creator  # registering again is a no-op
    for name in (NAME, op_type):
        assert trt.get_plugin_registry().get_creator(name, p.version, p.namespace) is not None
    made = creator.create_plugin(p.name, plugin.field_collection(trt, FIELDS), trt.TensorRTPhase.BUILD)
    assert plugin.decode_attributes({f.name: f.data for f in made.get_fields_to_serialize()}) == made.attrs


@pytest.mark.trt
@pytest.mark.gpu
def test_engine_with_plugin_matches_eager_op():
    trt = full_tensorrt()
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    creator = registry.PLUGINS[NAME].load_trt().register()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))  # TensorRT 11
    heads, head_dim = len(A["dilations"]), 8
    profile = builder.create_optimization_profile()
    tensors = []
    for i, name in enumerate(plugin.TENSORS):
        mask = i in plugin.MASKS  # [batch, seq] int32, as the exported graph passes them
        shape = (-1, -1) if mask else (-1, heads, -1, head_dim)
        tensors.append(network.add_input(name, trt.int32 if mask else trt.float32, shape))
        at = (lambda b, s: (b, s)) if mask else (lambda b, s: (b, heads, s, head_dim))
        profile.set_shape(name, at(1, 1), at(2, 16), at(4, 64))
    made = creator.create_plugin(NAME, plugin.field_collection(trt, FIELDS), trt.TensorRTPhase.BUILD)
    layer = network.add_plugin_v3(tensors, [], made)
    layer.get_output(0).name = plugin.OUTPUTS[0]
    network.mark_output(layer.get_output(0))
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    context = engine.create_execution_context()
    cases = [Case(2, 19, 8, tuple(A["dilations"]), ((0, 0), (1, 9)), (19, 13)), Case(1, 1, 8, tuple(A["dilations"])),
             Case(4, 64, 8, tuple(A["dilations"]), ((0, 5), (2, 0), (2, 63)), (64, 0, 50, 1))]  # fmt: skip
    for case in cases:
        x, _ = case.inputs(seed=case.seq, device="cuda")
        x = [t.to(torch.int32) if i in plugin.MASKS else t.contiguous() for i, t in enumerate(x)]
        want = sliding_window_reference(*x, **A)
        got = torch.empty_like(want)
        for name, value in [*zip(plugin.TENSORS, x, strict=True), (plugin.OUTPUTS[0], got)]:
            if name in plugin.TENSORS:
                context.set_input_shape(name, tuple(value.shape))
            context.set_tensor_address(name, value.data_ptr())
        assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        assert (got - want).abs().max() <= 1e-5
