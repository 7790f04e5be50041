"""Integration tests of daemon.http."""
