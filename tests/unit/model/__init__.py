"""Unit tests of daemon.model."""
