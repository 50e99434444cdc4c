"""The machinery the tests start and stop: app servers, Redis topologies, nginx, containers,
the services on this machine and a JWKS server. Helpers that tests call are in tests/conftest.py."""
