"""On-device training: models, trainer, checkpoints, ONNX export, streaming sessions."""
