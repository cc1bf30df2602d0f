"""The model zoo: every model takes the shapes it promises and returns N×classes logits."""

from __future__ import annotations

import pytest
import torch

from edgewire.errors import ConfigError
from edgewire.train.models import MAX_PARAMETERS, MODEL_NAMES, build_model, min_side

SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32), (3, 64, 64)]


def _cases() -> list[tuple[str, tuple[int, int, int]]]:
    return [(n, s) for n in MODEL_NAMES for s in SHAPES if min(s[1:]) >= min_side(n)]


@pytest.mark.parametrize(("name", "shape"), _cases())
def test_logits_have_one_row_per_sample_and_one_column_per_class(
    name: str, shape: tuple[int, int, int]
) -> None:
    channels, height, width = shape
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, height=height, width=width, num_classes=7)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(3, channels, height, width))
    assert out.shape == (3, 7)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_mode_backward_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    side = max(28, min_side(name))
    model = build_model(name, in_channels=1, height=side, width=side, num_classes=10)
    loss = model(torch.rand(4, 1, side, side)).logsumexp(dim=1).sum()
    torch.autograd.backward(loss)
    assert all(p.grad is not None for p in model.parameters())


def test_resnet_small_takes_camera_sized_rgb_and_stays_small() -> None:
    model = build_model("resnet_small", in_channels=3, height=224, width=224, num_classes=3)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 3)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_lenet5_at_28px_is_the_textbook_net() -> None:
    model = build_model("lenet5", in_channels=1, height=28, width=28, num_classes=10)
    fc_in = [m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert fc_in == [16 * 5 * 5, 120, 84]


def test_non_square_inputs_work() -> None:
    model = build_model("mnist_cnn", in_channels=2, height=9, width=40, num_classes=4)
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 2, 9, 40)).shape == (1, 4)


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("vgg16", in_channels=1, height=28, width=28, num_classes=10)
    message = str(info.value)
    assert "'vgg16'" in message
    assert all(name in message for name in MODEL_NAMES)


def test_input_too_small_for_the_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 6×6"):
        build_model("mnist_cnn", in_channels=1, height=5, width=28, num_classes=10)


def test_fc_layer_over_the_parameter_cap_is_refused_before_allocation() -> None:
    # 16×1024×1024 into mnist_cnn would need a ~2-billion-weight fc layer.
    with pytest.raises(ConfigError, match="resnet_small") as info:
        build_model("mnist_cnn", in_channels=16, height=1024, width=1024, num_classes=10)
    assert f"{MAX_PARAMETERS:,}" in str(info.value)
