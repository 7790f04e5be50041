"""Integration tests of daemon.images."""
