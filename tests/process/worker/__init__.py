"""Process tests of daemon.worker."""
