"""Who a token names and what it may do: first-party tokens (`tokens`), OAuth access tokens
(`oauth_tokens`, `dpop`), the two together (`policy`), keys (`jwks`), logout tokens and roles
(ARCHITECTURE.md, "A request's path, function by function"); applied by `app.gate`."""
