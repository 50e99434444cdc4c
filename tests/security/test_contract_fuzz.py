"""The served OpenAPI document against the app itself, with Schemathesis: the document is
valid OpenAPI 3.1, and generated requests (positive and negative) with a valid bearer token
never get a 5xx, and get only documented status codes, content types, headers and bodies.

Needs schemathesis (a dev dependency): without it this module is skipped with the reason.
"""

from __future__ import annotations

import itertools
import shutil
import time
import uuid

import pytest

schemathesis = pytest.importorskip(
    "schemathesis",
    reason="schemathesis is not installed: add schemathesis==4.32.5 (and its pins) to requirements-dev.txt",
)

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.factory import create_app  # noqa: E402
from app.services import services  # noqa: E402
from tests.conftest import SECRET, encode  # noqa: E402

MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
APP_CONFIG = {
    "APP_ENV": "testing", "BETTER_AUTH_SECRET": SECRET, "REDIS_URL": "", "BETTER_AUTH_URL": "", "JWKS_URL": "",
    "JWT_ALGORITHMS": "", "ADMIN_USER_IDS": "",
}
_callers = itertools.count()


def _documented_operations() -> list[str]:
    """`METHOD /path` of every documented operation, read from the document an app serves
    (an in-memory SQLite URL: serving /openapi.json touches no database)."""
    app = create_app({**APP_CONFIG, "DATABASE_URL": "sqlite://"})
    document = app.test_client().get("/openapi.json").get_json()
    services(app).database.dispose()
    return [f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item]


OPERATIONS = _documented_operations()
# Schemathesis's pytest loaders (`schema.parametrize()`, `from_fixture`) are not used: its lazy
# loader reads `request.node._nodeid`, which pytest 9 no longer has. Each operation is its own
# test instead, driving `operation.as_strategy()` with Hypothesis directly.
RUN_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                        suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])


@pytest.fixture(scope="module")
def contract_app(sqlite_template, tmp_path_factory):
    path = tmp_path_factory.mktemp("contract") / "taskgate.db"
    shutil.copyfile(sqlite_template, path)
    app = create_app({**APP_CONFIG, "DATABASE_URL": f"sqlite:///{path}"})
    yield app
    services(app).database.dispose()


@pytest.fixture(scope="module")
def api_schema(contract_app):
    config = schemathesis.Config.from_dict({
        # A body over MAX_CONTENT_LENGTH is refused with the documented 413 before it is parsed.
        "checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415,
                                                                      422, 428, 429, "5XX"]}},
        "generation": {
        # The bearer token is injected per case (below); security parameters are not fuzzed here
        # (tests/security/test_token_attacks.py is that fuzzer).
        "with-security-parameters": False,
        # Unknown query parameters are ignored by design (CONTRACT §4); unknown body fields are
        # rejected, which the task and isolation tests cover.
        "allow-extra-parameters": False,
    }})
    return schemathesis.openapi.from_wsgi("/openapi.json", contract_app, config=config)


def authorise(case, app, *, steer: bool = True) -> dict[str, str]:
    """A fresh caller per case, so a generated logout or revocation only ever affects that
    case: every other caller is an admin. With `steer` (valid requests only: a negative
    case's path parameters are the invalid part), the path user is the caller two times in
    three (the third keeps the generated one: a documented 403) and a task id is made to
    name one of the caller's own tasks every other time (else a documented 404)."""
    n = next(_callers)
    user = f"caller-{n}-{uuid.uuid4().hex[:6]}"
    now = int(time.time())
    token = encode({"sub": user, "iat": now, "exp": now + 900, "jti": uuid.uuid4().hex,
                    "role": "admin" if n % 2 == 0 else "user"})
    headers = {"Authorization": f"Bearer {token}"}
    path = case.path_parameters if case.path_parameters is not None and steer else {}
    if "user_id" in path and n % 3 != 2 and "{user_id}/tasks" in case.path:
        path["user_id"] = user
    if "task_id" in path and n % 2 == 0:
        created = app.test_client().post("/api/v1/tasks", json={"title": "seed"}, headers=headers)
        path["task_id"] = created.get_json()["id"]
    return headers


def operation_of(schema, label: str):
    method, path = label.split(" ", 1)
    return schema[path][method]


def test_the_document_is_valid_openapi_3_1(api_schema):
    api_schema.validate()  # against the OpenAPI 3.1 meta-schema
    assert api_schema.raw_schema["openapi"] == "3.1.0"
    loaded = [result.ok() for result in api_schema.get_all_operations()]
    assert sorted(f"{op.method.upper()} {op.path}" for op in loaded) == sorted(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_valid_requests_get_documented_answers(api_schema, contract_app, label):
    @RUN_SETTINGS
    @given(case=operation_of(api_schema, label).as_strategy(GenerationMode.POSITIVE))
    def run(case):
        case.call_and_validate(headers=authorise(case, contract_app), checks=CHECKS, app=contract_app)

    run()


@pytest.mark.parametrize("label", OPERATIONS)
def test_invalid_requests_are_refused_with_documented_4xx(api_schema, contract_app, label):
    operation = operation_of(api_schema, label)
    if not (operation.body or operation.query or operation.path_parameters):
        pytest.skip("nothing a client sends can be invalid (no parameters, no body)")

    @RUN_SETTINGS
    @given(case=operation.as_strategy(GenerationMode.NEGATIVE))
    def run(case):
        case.call_and_validate(headers=authorise(case, contract_app, steer=False),
                               checks=[*CHECKS, negative_data_rejection],
                               app=contract_app)

    run()
