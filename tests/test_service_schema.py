"""Property-based API tests: schemathesis generates requests from the app's OpenAPI schema.

Every generated request must get a non-5xx answer whose status code is documented and whose
JSON body matches the schema. The app runs with its lifespan (models and index loaded) and a
few indexed items; writes are open (no API key) so adds and deletes are exercised too.
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service import Settings, create_app
from tests.test_service_support import build_artifacts, image_bytes

CASES = {"n": 0, "statuses": {}}
MIN_CASES = 500
EXAMPLES_PER_OPERATION = 80


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory):
    models = build_artifacts(tmp_path_factory.mktemp("models"))
    app = create_app(
        Settings(model=models["vit32"], store=tmp_path_factory.mktemp("store"), max_wait_ms=0.5)
    )
    with TestClient(app) as client:  # runs the lifespan: models + index loaded on app.state
        files = [("images", (f"{i}.png", image_bytes(i), "image/png")) for i in range(4)]
        assert client.post("/v1/items", files=files, data={"ids": "0,1,2,3"}).status_code == 201
    # schemathesis's ASGI client runs the lifespan again: one engine holds the store at a time
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


def test_generated_requests_never_get_a_5xx(api_schema):
    """Positive and negative (schema-violating) requests for every operation of the schema."""
    operations = _operations(api_schema)
    assert {op.label for op in operations} >= {
        "POST /v1/search",
        "POST /v1/search/codes",
        "GET /v1/items/{item_id}/similar",
        "POST /v1/items",
        "PUT /v1/items/{item_id}",
        "GET /v1/items",
        "POST /v1/items/codes",
    }
    for op in operations:
        strategy = op.as_strategy(GenerationMode.POSITIVE) | op.as_strategy(GenerationMode.NEGATIVE)

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            response = case.call()
            CASES["n"] += 1
            CASES["statuses"][response.status_code] = (
                CASES["statuses"].get(response.status_code, 0) + 1
            )
            label = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{label}: {response.status_code} {response.text}"
            if response.status_code >= 400:
                body = response.json()
                assert isinstance(body.get("detail"), str) and body["detail"], (label, body)
            case.validate_response(
                response,
                checks=[
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
            )

        check()
    print(f"schemathesis: {CASES}")
    assert CASES["n"] >= MIN_CASES, CASES
