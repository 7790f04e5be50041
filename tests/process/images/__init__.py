"""Process tests of daemon.images."""
