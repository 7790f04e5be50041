"""Unit tests of testkit."""
