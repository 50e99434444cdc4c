"""Revocation: the denylist in Redis (`store`, `scripts`) and which Redis it lives in (`topology`)."""
