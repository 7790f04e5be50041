"""Process tests of tools."""
