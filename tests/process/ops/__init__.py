"""Process tests of daemon.ops."""
