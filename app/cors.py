"""CORS: the headers a browser needs for an allowed origin, only for a request that carries an
`Origin` (ARCHITECTURE.md, "Observability")."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, Request, Response, request

ALLOW_HEADERS = ("Authorization", "Content-Type", "X-Request-ID")
EXPOSE_HEADERS = ("Location", "X-Total-Count", "X-Request-ID", "Retry-After", "RateLimit", "RateLimit-Policy")
MAX_AGE_SECONDS = 600


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[str]  # exact origins, lowercase (app.config)

    def apply(self, response: Response, req: Request) -> None:
        origin = req.headers.get("Origin")
        if origin is None or origin.lower() not in self.origins:
            return  # not a cross-origin browser request, or not one of ours: nothing to allow
        headers = response.headers
        headers["Access-Control-Allow-Origin"] = origin
        if req.method == "OPTIONS" and "Access-Control-Request-Method" in req.headers:  # a preflight
            headers["Access-Control-Allow-Methods"] = response.headers.get("Allow", "")
            asked = [name.strip() for name in req.headers.get("Access-Control-Request-Headers", "").split(",")]
            allowed = {name.lower() for name in ALLOW_HEADERS}
            granted = [name for name in asked if name.lower() in allowed]
            if granted:
                headers["Access-Control-Allow-Headers"] = ", ".join(granted)
            headers["Access-Control-Max-Age"] = str(MAX_AGE_SECONDS)
        else:
            headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSE_HEADERS)


def register_cors(app: Flask, origins: tuple[str, ...]) -> None:
    policy = CorsPolicy(frozenset(origin.lower() for origin in origins))

    def add_cors_headers(response: Response) -> Response:
        policy.apply(response, request)
        return response

    app.after_request(add_cors_headers)
