"""Optimize registered models: convert to ONNX, quantize, prune, distill, measure each candidate
on the user's eval set and register the fastest one that keeps its accuracy, with lineage."""
