"""Authorisation: what an authenticated caller may do."""

from __future__ import annotations

from app.errors import Forbidden
from app.security.tokens import Principal


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("This needs an administrator.")


def require_path_user(principal: Principal, path_user_id: str) -> None:
    if path_user_id != principal.user_id:
        raise Forbidden("The user in the path is not the user of the token.")
