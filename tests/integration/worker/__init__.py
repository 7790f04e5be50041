"""Integration tests of daemon.worker."""
