"""Process tests of daemon.model."""
