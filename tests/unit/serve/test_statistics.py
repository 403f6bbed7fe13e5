"""Inference statistics in Triton's shape: what the HTTP body and the gRPC message carry."""

from __future__ import annotations

from shipyard.serve.dataplane import VersionStats
from shipyard.serve.protocols import grpc_codec
from shipyard.serve.statistics import VersionStatistics


def test_counts_and_nanoseconds_per_phase_and_batch_size() -> None:
    stats = VersionStatistics()
    stats.ran_batch(3, 0.002, [0.001, 0.0005])  # two requests merged into one batch of 3 rows
    stats.succeeded(4_000_000)
    stats.succeeded(3_000_000)
    stats.failed(1_000)
    body = stats.inference_stats()
    assert body["success"] == {"count": 2, "ns": 7_000_000}
    assert body["fail"] == {"count": 1, "ns": 1_000}
    assert body["queue"] == {"count": 2, "ns": 1_500_000}
    assert body["compute_infer"] == {"count": 2, "ns": 4_000_000}
    # perf_analyzer requires the three compute counts to match
    assert body["compute_input"]["count"] == body["compute_output"]["count"] == 2
    assert body["cache_hit"] == body["cache_miss"] == {"count": 0, "ns": 0}
    assert stats.batch_stats() == [
        {
            "batch_size": 3,
            "compute_input": {"count": 1, "ns": 0},
            "compute_infer": {"count": 1, "ns": 2_000_000},
            "compute_output": {"count": 1, "ns": 0},
        }
    ]
    assert stats.last_inference_ms > 0


def test_the_grpc_message_carries_the_same_numbers() -> None:
    stats = VersionStatistics()
    stats.ran_batch(2, 0.001, [0.0])
    stats.succeeded(5)
    entry = grpc_codec.model_statistics(VersionStats("m", 2, 1, 2, 1, stats))
    assert (entry.name, entry.version, entry.inference_count, entry.execution_count) == ("m", "2", 2, 1)
    assert (entry.inference_stats.success.count, entry.inference_stats.success.ns) == (1, 5)
    assert entry.inference_stats.compute_input.count == entry.inference_stats.compute_infer.count == 1
    (batch,) = entry.batch_stats
    assert (batch.batch_size, batch.compute_infer.count, batch.compute_infer.ns) == (2, 1, 1_000_000)
