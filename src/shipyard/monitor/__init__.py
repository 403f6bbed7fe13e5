"""Observability: Prometheus metrics (all in one place), logs, drift, prediction log."""
