"""Protobuf code of Triton's model configuration subset (scripts/generate_protos.py)."""
