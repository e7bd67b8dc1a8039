"""The HTTP API fuzzed from its own OpenAPI document with schemathesis, in process (ASGI transport).

Every operation gets schema-valid and schema-breaking requests (derandomized, a bounded number per
operation, under a minute in all) against a service with a tiny speech model and a tiny text model.
Checked: no 5xx, and every answer conforms to the schema (declared status, content type, body).
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
pytest.importorskip("transformers")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from emovox.server import Settings, create_app  # noqa: E402
from emovox.testing import create_model  # noqa: E402

#: Examples per operation and generation mode (positive, negative); 11 operations.
EXAMPLES = 12
CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance)


def _app(tmp_path_factory):
    from test_server import _tiny_text_model

    root = tmp_path_factory.mktemp("schema")
    model = create_model(root / "tiny-cnn", temperature=0.3)
    text = _tiny_text_model(root / "text")
    return create_app(Settings(model=str(model), text_model=str(text), max_upload_mb=1.0, max_duration_s=10.0,
                               max_concurrency=2))


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    from schemathesis.python.asgi import shutdown_lifespans

    schema = schemathesis.openapi.from_asgi("/openapi.json", _app(tmp_path_factory))
    yield schema
    shutdown_lifespans()  # the app's lifespan (batcher threads) ends with this module


def fuzz_operation(op, mode, tried: dict[str, int]) -> None:
    """``EXAMPLES`` cases of one operation in one generation mode, each sent and checked."""
    key = op.label + (" negative" if mode == GenerationMode.NEGATIVE else "")

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case):
        tried[key] = tried.get(key, 0) + 1
        case.call_and_validate(checks=list(CHECKS))

    try:
        run()
    except Unsatisfiable:  # nothing to break: an operation without parameters or body (GET /healthz)
        assert mode == GenerationMode.NEGATIVE and key not in tried


@pytest.mark.slow
def test_api_from_its_openapi_schema(api_schema):
    """Schema-valid and schema-breaking requests for every operation: no 5xx, every answer as declared."""
    tried: dict[str, int] = {}
    for result in api_schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(result.ok(), mode, tried)
    operations = [k for k in tried if not k.endswith(" negative")]
    assert len(operations) >= 11 and sum(tried.values()) >= 100, tried  # every operation exercised
