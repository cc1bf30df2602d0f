"""Serving: the model store, ONNX Runtime sessions, dynamic batching, KServe v2 codec."""
