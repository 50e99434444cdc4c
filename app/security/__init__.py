"""Security policy, in one place: the request gate (`gate`), the token policy (`tokens`),
the verified-token cache (`verified_tokens`), Better Auth's keys (`jwks`) and authorisation
(`authz`)."""
