"""Unit tests of daemon.images."""
