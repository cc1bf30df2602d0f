"""What an agent can train, as plain names: importable without torch, so a host
streaming from a machine with no torch can check its flags before connecting."""

from __future__ import annotations

MODEL_NAMES: tuple[str, ...] = ("mnist_cnn", "lenet5", "resnet_small", "resnet18")
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
