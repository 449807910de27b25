"""Artifact emitters (HF checkpoint, ONNX graphs) and what they share."""
