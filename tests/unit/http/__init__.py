"""Unit tests of daemon.http."""
