"""Protobuf code of the V2 gRPC service, generated from inference.proto (scripts/generate_protos.py)."""
