"""Integration tests of tools."""
