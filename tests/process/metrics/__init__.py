"""Process tests of daemon.metrics."""
