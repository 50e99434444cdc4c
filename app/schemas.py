"""Request and response declarations. The same pydantic models validate requests and
generate the OpenAPI document, so the two cannot drift apart."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

Priority = Literal["low", "medium", "high"]
READ_ONLY_FIELDS = frozenset({"id", "user_id", "created_at", "updated_at"})


def _no_nul(value: str | None) -> str | None:
    # PostgreSQL cannot store NUL in text; reject it here rather than fail in the database.
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(_no_nul),
    Field(description="1–200 characters after trimming", examples=["Buy milk"]),
]
Description = Annotated[
    str | None,
    StringConstraints(max_length=1000),
    AfterValidator(_no_nul),
    Field(description="At most 1000 characters"),
]
DueDate = Annotated[
    datetime | None,
    AfterValidator(_as_utc),
    Field(description="ISO-8601 date-time; without a zone it is taken as UTC"),
]


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TaskCreate(StrictBody):
    title: Title
    description: Description = None
    completed: bool = False
    priority: Priority = "medium"
    due_date: DueDate = None


class TaskReplace(TaskCreate):
    """PUT: a full update; `title` is required, every other field resets to its default."""


class TaskPatch(StrictBody):
    title: Title = None  # type: ignore[assignment]  # absent means "unchanged"
    description: Description = None
    completed: bool = None  # type: ignore[assignment]
    priority: Priority = None  # type: ignore[assignment]
    due_date: DueDate = None


class Task(BaseModel):
    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    priority: Priority
    due_date: datetime | None
    created_at: datetime
    updated_at: datetime


def _no_nul_required(value: str) -> str:
    return _no_nul(value)  # type: ignore[return-value]


class TaskListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["all", "pending", "completed"] = "all"
    q: Annotated[str, StringConstraints(max_length=200), AfterValidator(_no_nul_required)] | None = Field(
        default=None, description="Title or description contains this text (case-insensitive)"
    )
    priority: Priority | None = None
    sort: Literal["created_at", "updated_at", "due_date", "priority", "title"] = "created_at"
    order: Literal["asc", "desc"] = "desc"
    limit: int = Field(default=100, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=1_000_000_000)


class TokenInfo(BaseModel):
    jti: str | None
    sid: str | None
    iat: datetime | None
    exp: datetime | None
    client_id: str | None = Field(default=None, description="An OAuth access token's client (null: first-party)")
    scope: str | None = Field(default=None, description="An OAuth access token's scopes, space-separated")


class Me(BaseModel):
    user_id: str
    email: str | None
    name: str | None
    role: str | None
    is_admin: bool
    token: TokenInfo


class LogoutRequest(StrictBody):
    everywhere: bool = Field(default=False, description="Revoke every token of the caller, not only this one: "
                             "a first-party token only (an OAuth access token gets 403 forbidden)")


Reason = Annotated[str | None, StringConstraints(max_length=500), AfterValidator(_no_nul),
                   Field(description="Why, for the audit log")]


class RevokeRequest(StrictBody):
    reason: Reason = None


class RevokeTokenRequest(StrictBody):
    """Exactly one of `jti` or `token`."""

    jti: Identifier | None = None
    token: Annotated[str, StringConstraints(min_length=1, max_length=16384)] | None = None
    reason: Reason = None

    @model_validator(mode="after")
    def _exactly_one(self) -> RevokeTokenRequest:
        if (self.jti is None) == (self.token is None):
            raise ValueError("give exactly one of jti or token")
        return self


def _printable(value: str) -> str:
    # What a token's sub, sid or jti may be (app.security.tokens.is_identifier), so that
    # every id a token can carry, and nothing else, can be named.
    if not value.isprintable():
        raise ValueError("must be printable characters only")
    return value


Identifier = Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(_printable),
                       Field(description="1-255 printable characters, as in the token's claim")]


class UserPath(BaseModel):
    user_id: Identifier


class SessionPath(BaseModel):
    sid: Identifier


class ClientPath(BaseModel):
    client_id: Identifier


class ClientRevoked(BaseModel):
    client_id: str
    revoked_before: datetime


class UserRevoked(BaseModel):
    user_id: str
    revoked_before: datetime


RevocationKind = Literal["jti", "token", "session", "user", "sidless", "grant", "client"]


class Revoked(BaseModel):
    revoked: RevocationKind
    target: str


class RevocationRecord(BaseModel):
    id: int
    kind: RevocationKind
    target: str
    user_id: str | None
    client_id: str | None = Field(description="The OAuth client the revocation concerns, if one")
    actor: str
    reason: str | None
    created_at: datetime
    expires_at: datetime
    cutoff: datetime | None = Field(description="kind=user, sidless, grant, client: tokens issued at or before "
                                                "it are denied")


class RevocationListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    user_id: Annotated[str, StringConstraints(max_length=255), AfterValidator(_no_nul_required)] | None = None
    client_id: Annotated[str, StringConstraints(max_length=255), AfterValidator(_no_nul_required)] | None = None
    limit: int = Field(default=50, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=1_000_000_000)


class ProtectedResource(BaseModel):
    """RFC 9728 §2: where an OAuth client gets a token for this API, and what to ask for."""

    resource: str
    authorization_servers: list[str]
    scopes_supported: list[str]
    bearer_methods_supported: list[str]
    dpop_signing_alg_values_supported: list[str]
    resource_name: str
    resource_documentation: str


class Status(BaseModel):
    status: str
    checks: dict[str, str] | None = None


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details; `code` is stable and machine-readable."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = None


class BackchannelLogoutForm(BaseModel):
    """OpenID Connect Back-Channel Logout 1.0 §2.5: the logout token, form-encoded."""

    model_config = ConfigDict(extra="ignore")

    logout_token: Annotated[str, StringConstraints(min_length=1, max_length=16384)] = Field(
        description="A JWT signed by the issuer: iss, aud, iat, exp, jti, events, and sub and/or sid")


class OAuthError(BaseModel):
    """RFC 6749 §5.2, the error shape OAuth and OpenID peers read."""

    error: Literal["invalid_request"]
    error_description: str
