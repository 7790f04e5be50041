"""Process tests of bench."""
