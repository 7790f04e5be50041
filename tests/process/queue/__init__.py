"""Process tests of daemon.queue."""
