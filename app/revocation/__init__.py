"""Revocation: the denylist in Redis, the audit table it is a copy of, and what keeps the two
honest (ARCHITECTURE.md, "The revocation model"); `store` is the entry point."""
