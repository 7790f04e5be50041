"""Prometheus metrics: inferd's own, Triton's names for dashboards built for Triton, and the configured limits."""
