"""Process tests of daemon.http."""
