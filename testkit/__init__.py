"""Test infrastructure that tests/ and bench/ share; not part of the installed appliance (pyproject lists it nowhere).

- harness: real processes (a server, a redis-server, the whole appliance) started and stopped as trees
- proctree: process trees and the one reader of /proc/<pid>/stat
- slow_clients: hostile HTTP clients for the front-door tests and the abuse probes
- images: images encoded the way a client uploads them
"""
