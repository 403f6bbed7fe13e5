"""Thin protocol adapters over the one dataplane: V2, V1, SageMaker/Vertex, management."""
