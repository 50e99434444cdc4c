"""The machinery the tests start and stop: app servers, Redis topologies, nginx, containers,
the services on this machine and a JWKS server; and the plain helpers several suites share
(the clock, the DPoP proof maker, the attack suites' hand-built tokens). Fixtures, and the
helpers that read what the app answers (bearer, me), are in tests/conftest.py."""
