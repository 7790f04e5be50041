"""Integration tests of daemon.ops."""
