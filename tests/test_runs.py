"""Every model the suite builds or exports, scaled, runs in ONNX Runtime at its new input size.

The analysis and the plan can agree with each other and still describe a model ONNX Runtime
refuses (an LSTM whose features no longer match its weights, two maps of different sizes
added after an upsample).  Here each model is scaled twice -- the main job (dWr to 2x the
flops, random init: every dimension moves) and resolution alone (1.5x) -- and the written
model is run once on inputs of its new size.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxscale import zoo
from onnxscale.scaling.pipeline import Planner, apply_plan, check
from onnxscale.scaling.plan import Multipliers, ScaleOptions
from onnxscale.scaling.resolution.resize import FlattenedHeadSize
from onnxscale.scaling.solver import TOLERANCE, solve
from onnxscale.scaling.strategy import parse_strategy

from .conftest import ort_run

RANDOM = ScaleOptions(init="random")

# (name, exporter, res): the resolutions other tests export at, so the session's exports are
# shared; then the families of issue 9 (nested residual, dense, Inception, ShuffleNet,
# upsample-and-merge, CRNN, plain stacks)
EXPORTS = [
    ("resnet18", "legacy", 96), ("resnet18", "dynamo", 96), ("resnet50", "legacy", 96),
    ("resnext50_32x4d", "legacy", 96), ("efficientnet_b0", "legacy", 96),
    ("efficientnet_b0", "dynamo", 96), ("mobilenet_v2", "legacy", 96),
    ("mobilenet_v3_small", "legacy", 96), ("regnet_x_400mf", "legacy", 96),
    ("regnet_y_400mf", "legacy", 96), ("mnasnet0_5", "legacy", 96),
    ("convnext_tiny", "legacy", 96), ("efficientnet_v2_s", "legacy", 96),
    ("timm.regnetz_b16", "legacy", 96), ("timm.ghostnet_100", "legacy", 96),
    ("resnet50", "dynamo", 96), ("convnext_tiny", "dynamo", 96),
    ("shufflenet_v2_x1_0", "legacy", 96), ("shufflenet_v2_x1_0", "dynamo", 96),
    ("timm.ghostnet_100", "dynamo", 96), ("densenet121", "legacy", 96),
    ("squeezenet1_0", "legacy", 96), ("googlenet", "legacy", 96),
    ("inception_v3", "legacy", 96), ("timm.hrnet_w18_small", "legacy", 128),
    ("vgg11_bn", "legacy", 224), ("alexnet", "legacy", 224),
    ("timm.dla34", "legacy", 128), ("timm.cspdarknet53", "legacy", 128),
    ("timm.cs3darknet_s", "legacy", 128), ("timm.cs3darknet_s", "dynamo", 128),
    ("timm.res2net50_14w_8s", "legacy", 128),
    ("local.crnn", "legacy", 0), ("local.crnn", "dynamo", 0),
    ("local.fpn", "legacy", 0), ("local.fpn", "dynamo", 0), ("local.plain", "legacy", 0),
    ("local.yolo", "legacy", 0),
]
# the PaddleOCR models take any size; analyzed (and scaled) at these
PADDLE_SHAPES = {"det": [1, 3, 320, 320], "rec": [1, 3, 48, 320], "cls": [1, 3, 48, 192]}


def scale_and_run(proto: onnx.ModelProto, shapes: dict[str, list[int]],
                  options: ScaleOptions = RANDOM) -> None:
    planner = Planner(proto, shapes)
    solution = solve(None, shapes, parse_strategy("dWr"), "ratio", 2.0, options,
                     planner=planner, name="dWr")
    assert abs(solution.error) <= TOLERANCE
    plans = [solution.plan]
    try:
        plans.append(planner.plan(Multipliers(r=1.5), options))
    except FlattenedHeadSize as exc:  # VGG, AlexNet: only some sizes fit their classifier
        assert "reads the flattened" in str(exc) and "Gemm" in str(exc)
    for plan in plans:
        outcome = apply_plan(proto, shapes, plan)
        model = outcome.model.SerializeToString()
        check(model)
        rng = np.random.default_rng(0)
        feeds = {name: rng.standard_normal(dims).astype(np.float32)
                 for name, dims in outcome.inputs.items()}
        for output in ort_run(model, feeds):
            assert np.isfinite(output).all()


@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.slow
def test_zoo_models_run_after_scaling(name):
    scale_and_run(zoo.build(name), {})


@pytest.mark.parametrize("name, exporter, res", EXPORTS)
@pytest.mark.slow
def test_exports_run_after_scaling(exports, name, exporter, res):
    scale_and_run(onnx.load(str(exports(name, exporter, res or 224))), {})


@pytest.mark.parametrize("which", sorted(PADDLE_SHAPES))
@pytest.mark.slow
def test_paddleocr_models_run_after_scaling(paddleocr_models, which):
    # the direction classifier's 8-16 channel layers need finer width steps (README)
    options = ScaleOptions(init="random", divisor=4) if which == "cls" else RANDOM
    scale_and_run(onnx.load(str(paddleocr_models[which])), {"x": PADDLE_SHAPES[which]}, options)
