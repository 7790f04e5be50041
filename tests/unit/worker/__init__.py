"""Unit tests of daemon.worker."""
