"""The built-in model zoo: graphs are valid, run, and have pycls's exact complexity."""

from __future__ import annotations

import functools
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import shape_inference

from onnxscale import zoo
from onnxscale.errors import OnnxscaleError
from onnxscale.scaling.strategy import (
    adjust_block_compatibility,
    efficientnet_round_filters,
    efficientnet_round_repeats,
    round_depth,
    round_group_width,
    round_resolution,
    round_width,
    snap_group_width,
)

REQUIRED = [
    "efficientnet-b0", "efficientnet-b1", "efficientnet-b2", "efficientnet-b3",
    "regnety-400mf", "regnety-800mf", "regnetz-500mf", "resnet-50",
]

# docs/concepts.md (Complexity): pycls's flops / params / acts (pycls flops include SE and classifier biases).
PYCLS_REFERENCE = {
    "efficientnet-b0": (385_825_092, 5_288_548, 6_748_036),
    "efficientnet-b1": (686_817_992, 7_794_184, 10_884_328),
    "efficientnet-b2": (993_578_282, 9_109_994, 13_832_834),
    "efficientnet-b3": (1_827_162_472, 12_233_232, 23_831_296),
    "regnety-400mf": (401_849_056, 4_344_144, 3_892_496),
    "regnety-800mf": (797_183_328, 6_263_168, 5_249_888),
}

# Models outside the table: pycls's complexity formulas worked by hand, bias terms excluded
# (pycls's own flops would be higher by the SE and classifier biases: +13,286 for RegNetZ-500MF,
# +1,000 for the ResNets and RegNetX).
HAND_COMPUTED = {
    "regnetz-500mf": (507_203_840, 7_122_742, 5_860_358),
    "regnetx-400mf": (397_677_568, 5_157_512, 3_143_272),
    "resnet-50": (4_089_184_256, 25_557_032, 11_315_688),
    "resnet-34": (3_663_761_408, 21_797_672, 3_939_816),
    "resnet-18": (1_814_073_344, 11_689_512, 2_685_416),
}


@functools.lru_cache(maxsize=None)
def _model(name: str) -> onnx.ModelProto:
    return zoo.build(name, seed=0)


def _count(model: onnx.ModelProto) -> tuple[int, int, int]:
    """An independent pycls-convention counter from ONNX shape inference (docs/concepts.md, Complexity)."""
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(g.value_info) + list(g.input) + list(g.output)}
    shapes.update({t.name: list(t.dims) for t in g.initializer})
    bn_stats = {name for n in g.node if n.op_type == "BatchNormalization" for name in n.input[3:5]}
    params = sum(int(np.prod(t.dims)) for t in g.initializer if t.name not in bn_stats)
    flops = acts = 0
    for n in g.node:
        if n.op_type in ("Conv", "Gemm", "MaxPool"):
            out = shapes[n.output[0]]
            assert all(d > 0 for d in out), (n.name, out)
            acts += int(np.prod(out))
        if n.op_type == "Conv":
            flops += int(np.prod(shapes[n.input[1]])) * int(np.prod(shapes[n.output[0]][2:]))
        elif n.op_type == "Gemm":
            flops += int(np.prod(shapes[n.input[1]]))
    return flops, params, acts


def _run(model: onnx.ModelProto, res: int) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, res, res), dtype=np.float32)
    return sess.run(None, {"input": x})[0]


# ------------------------------------------------------------------------------ registry


def test_names_sorted_and_complete():
    names = zoo.names()
    assert names == sorted(names)
    assert set(REQUIRED) <= set(names)


def test_unknown_name_is_a_one_line_user_error():
    for call in (zoo.build, zoo.spec, zoo.describe):
        with pytest.raises(OnnxscaleError) as info:
            call("foo")
        msg = str(info.value)
        assert msg.startswith("unknown zoo model 'foo'; available: ")
        assert "\n" not in msg
        assert all(name in msg for name in zoo.names())


@pytest.mark.parametrize("name", zoo.names())
def test_describe_is_one_line(name):
    text = zoo.describe(name)
    assert "\n" not in text and str(zoo.spec(name).res) in text


# ------------------------------------------------------------------------------ graphs


@pytest.mark.parametrize("name", zoo.names())
def test_model_is_valid_and_runs(name):
    model = _model(name)
    onnx.checker.check_model(model, full_check=True)
    res = zoo.spec(name).res
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.producer_name == "onnxscale"
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "input" and out.name == "logits"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, res, res]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 1000]
    node_names = [n.name for n in model.graph.node]
    assert all(node_names) and len(set(node_names)) == len(node_names)
    assert "stem.conv" in node_names and "head.fc" in node_names
    # BN variances positive, convs bias-free except SE
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "BatchNormalization":
            assert (onnx.numpy_helper.to_array(inits[n.input[4]]) > 0).all()
        if n.op_type == "Conv" and len(n.input) == 3:
            assert ".se." in n.name
    y = _run(model, res)
    assert y.shape == (1, 1000) and np.isfinite(y).all()


def test_metadata_records_the_spec():
    model = _model("regnety-400mf")
    props = {p.key: p.value for p in model.metadata_props}
    spec = json.loads(props["onnxscale.zoo.spec"])
    assert spec["type"] == "AnyNetSpec" and spec["depths"] == [1, 3, 6, 6]
    assert props["onnxscale.zoo.name"] == "regnety-400mf"
    assert "AnyNetSpec(" in model.doc_string


def test_seed_controls_weights():
    a, b, c = (zoo.build("regnety-400mf", seed=s) for s in (0, 0, 1))
    wa, wb, wc = (onnx.numpy_helper.to_array(m.graph.initializer[0]) for m in (a, b, c))
    assert np.array_equal(wa, wb) and not np.array_equal(wa, wc)


# ------------------------------------------------------------------------------ complexity


@pytest.mark.parametrize("name", sorted(PYCLS_REFERENCE))
def test_complexity_matches_pycls_table(name):
    flops, params, acts = _count(_model(name))
    ref_flops, ref_params, ref_acts = PYCLS_REFERENCE[name]
    assert params == ref_params
    assert acts == ref_acts
    assert abs(flops - ref_flops) / ref_flops < 1e-3
    assert flops <= ref_flops  # we leave out pycls's bias terms


@pytest.mark.parametrize("name", sorted(HAND_COMPUTED))
def test_complexity_matches_hand_computed_pycls(name):
    assert _count(_model(name)) == HAND_COMPUTED[name]


# ------------------------------------------------------------------------------ specs


def test_efficientnet_presets_reproduce_pycls_configs():
    # pycls configs/dds_baselines/effnet/EN-B{1,2,3}_dds_8gpu.yaml
    pycls = {
        "efficientnet-b1": (32, (2, 3, 3, 4, 4, 5, 2), (16, 24, 40, 80, 112, 192, 320), 1280, 240),
        "efficientnet-b2": (32, (2, 3, 3, 4, 4, 5, 2), (16, 24, 48, 88, 120, 208, 352), 1408, 260),
        "efficientnet-b3": (40, (2, 3, 3, 5, 5, 6, 2), (24, 32, 48, 96, 136, 232, 384), 1536, 300),
    }
    for name, expected in pycls.items():
        s = zoo.spec(name)
        assert (s.stem_w, s.depths, s.widths, s.head_w, s.res) == expected


def test_regnet_specs():
    y4 = zoo.spec("regnety-400mf")
    assert (y4.depths, y4.widths, y4.group_ws) == ((1, 3, 6, 6), (48, 104, 208, 440), (8, 8, 8, 8))
    y8 = zoo.spec("regnety-800mf")
    assert (y8.depths, y8.widths, y8.group_ws) == ((1, 3, 8, 2), (64, 128, 320, 768), (16, 16, 16, 16))
    z5 = zoo.spec("regnetz-500mf")
    assert (z5.depths, z5.widths, z5.bot_muls, z5.head_w) == ((1, 4, 9, 7), (16, 40, 104, 256), (4.0,) * 4, 1024)
    assert z5.block_type == "res_bottleneck_linear_block" and z5.activation == "silu"
    assert isinstance(zoo.spec("resnet-50"), zoo.ResNetSpec)
    assert isinstance(zoo.spec("efficientnet-b0"), zoo.EfficientNetSpec)


def test_rounding_rules():
    assert round_depth(1.1, 3) == 3
    assert round_depth(0.1, 2) == 1          # at least one block
    assert round_depth(1.5, 3) == 4          # 4.5 rounds half to even
    assert round_depth(1.25, 2) == 2         # 2.5 rounds half to even
    assert round_width(1.5, 20) == 32        # 3.75 -> 4 * 8
    assert round_width(1.25, 16) == 16       # 2.5 -> 2 * 8
    assert round_width(0.01, 16) == 8        # at least 8
    assert [snap_group_width(x) for x in (1, 2, 3, 5, 6, 12, 20, 28)] == [1, 2, 4, 4, 8, 16, 16, 32]
    assert round_group_width(2, 8) == 16
    assert round_group_width(1.3, 3) == 4
    assert round_group_width(1, 64, bottleneck_width=48) == 48
    assert round_resolution(16 ** 0.05, 224) == 256
    assert round_resolution(1.0, 226) == 224  # 56.5 -> 56
    assert adjust_block_compatibility([104], [1.0], [24]) == ([96], [1.0], [24])
    assert adjust_block_compatibility([40], [4.0], [16]) == ([40], [4.0], [16])
    assert adjust_block_compatibility([44], [4.0], [24]) == ([42], [4.0], [24])
    assert adjust_block_compatibility([256], [0.25], [64]) == ([256], [0.25], [64])
    assert efficientnet_round_filters(16, 1.2) == 24   # 16 < 90% of 19.2
    assert efficientnet_round_filters(1280, 1.1) == 1408
    assert efficientnet_round_repeats(3, 1.4) == 5


@pytest.mark.parametrize("name", zoo.names())
def test_unit_scaling_is_identity(name):
    s = zoo.spec(name)
    assert s.scaled() == s


def test_scaled_efficientnet_fast_compound():
    # docs/concepts.md (Strategies): EfficientNet-B0 x16 with dWr (d1_w8_g8_r1) under pycls rounding.
    s = zoo.spec("efficientnet-b0").scaled(d=16 ** 0.1, w=16 ** 0.4, g=16 ** 0.4, r=16 ** 0.05)
    assert s.depths == (1, 3, 3, 4, 4, 5, 1)
    assert s.widths == (48, 72, 120, 240, 336, 584, 968)
    assert (s.stem_w, s.head_w, s.res) == (96, 3880, 256)
    assert s.kernels == zoo.spec("efficientnet-b0").kernels


def test_scaled_anynet_groups_and_compatibility():
    s = zoo.spec("regnety-400mf").scaled(g=2)
    assert s.group_ws == (16, 16, 16, 16)
    assert s.widths == (48, 96, 208, 448)    # 104/16 = 6.5 -> 6, 440/16 = 27.5 -> 28
    assert s.stem_w == 32
    z = zoo.spec("regnetz-500mf").scaled(w=2, d=2, r=1.1)
    assert z.widths == (32, 80, 208, 512) and z.depths == (2, 8, 18, 14)
    assert z.head_w == 1024 and z.res == 248  # pycls does not scale the AnyNet head or stem
    # pycls's ResNet-50 is an AnyNet whose group widths equal the bottleneck widths (one group);
    # scaling w alone keeps group width 64, so the 96-wide bottleneck snaps to 128 (2 groups) ...
    r = zoo.spec("resnet-50").scaled(w=1.5)
    assert r.widths == (512, 1024, 2048, 4096) and r.group_ws == (64, 128, 256, 512)
    # ... while scaling g with w keeps one group per conv.
    r = zoo.spec("resnet-50").scaled(w=1.5, g=1.5)
    assert r.widths == (384, 768, 1536, 3072) and r.group_ws == (96, 192, 384, 768)
    assert r.stem_w == 64


def test_scaled_spec_builds_and_runs():
    s = zoo.spec("efficientnet-b0").scaled(w=2)
    assert s.widths == (32, 48, 80, 160, 224, 384, 640) and (s.stem_w, s.head_w) == (64, 2560)
    model = zoo.build_spec(s, seed=3, name="efficientnet-b0-w2")
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.name == "efficientnet-b0-w2"
    flops, params, acts = _count(model)
    base_flops, _, base_acts = _count(_model("efficientnet-b0"))
    assert 3.5 < flops / base_flops < 4.0 and 1.9 < acts / base_acts < 2.1
    y = _run(model, s.res)
    assert y.shape == (1, 1000) and np.isfinite(y).all()


def test_build_spec_rejects_other_objects():
    with pytest.raises(OnnxscaleError):
        zoo.build_spec(object())
