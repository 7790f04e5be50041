"""Integration tests of daemon.model."""
