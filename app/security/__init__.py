"""Security policy: the token policy (`tokens`), the verified-token cache (`verified_tokens`),
Better Auth's keys (`jwks`), logout tokens (`logout_tokens`) and authorisation (`authz`). The
request gate that applies them is Flask glue: `app.gate`."""
