"""Unit tests of daemon.metrics."""
