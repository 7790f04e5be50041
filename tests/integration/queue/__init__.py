"""Integration tests of daemon.queue."""
