"""The stack taskgate was planned on, as its plan wrote it: FastAPI, uvicorn, PyJWT and the
SQLAlchemy ORM, serving the same authenticated list (`GET /api/v1/tasks?limit=20`, HS256
Better Auth tokens) from the same database. bench/run.py starts it beside taskgate and prints
taskgate's list capacity against this one's in every run:

    DATABASE_URL=postgresql+psycopg://... BETTER_AUTH_SECRET=... JWT_ISSUER=... JWT_AUDIENCE=... \\
        uvicorn bench.peer:app --workers 2 --no-access-log

It checks what a careful plan of that stack checks (signature, exp, iss, aud, the owner in the
query) and nothing of what taskgate adds (revocation, rate limits, claim types, logs, metrics).
"""

from __future__ import annotations

import os
from datetime import datetime

import jwt
from fastapi import Depends, FastAPI, Header, HTTPException, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from app.models import Task

engine = create_engine(os.environ["DATABASE_URL"], pool_size=int(os.environ.get("DB_POOL_SIZE", "10")))
sessions = sessionmaker(engine)
SECRET = os.environ["BETTER_AUTH_SECRET"]
# As taskgate reads them: both default to BETTER_AUTH_URL.
ISSUER = os.environ.get("JWT_ISSUER", os.environ.get("BETTER_AUTH_URL")) or None
AUDIENCE = os.environ.get("JWT_AUDIENCE", os.environ.get("BETTER_AUTH_URL")) or None
app = FastAPI()


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    priority: str
    due_date: datetime | None
    created_at: datetime
    updated_at: datetime


def current_user(authorization: str = Header()) -> str:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        raise HTTPException(401, "missing token")
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], issuer=ISSUER, audience=AUDIENCE,
                            options={"require": ["exp", "iat", "sub"]})
    except jwt.PyJWTError as error:
        raise HTTPException(401, "invalid token") from error
    return claims["sub"]


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/api/v1/tasks", response_model=list[TaskOut])
def list_tasks(user_id: str = Depends(current_user), limit: int = Query(100, ge=1, le=100),
               offset: int = Query(0, ge=0)) -> list[Task]:
    # The session opens and closes in the endpoint's thread. As a `yield` dependency (FastAPI's
    # tutorial) its exit waits for a thread of the same 40 the endpoints hold while they wait for
    # a pooled connection: under 1000 connections every request timed out (fastapi#3205).
    statement = (select(Task).where(Task.user_id == user_id).order_by(Task.created_at.desc(), Task.id.desc())
                 .limit(limit).offset(offset))
    with sessions() as session:
        return list(session.scalars(statement))
