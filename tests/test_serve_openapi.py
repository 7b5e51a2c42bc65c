"""gencc serve's OpenAPI schema, fuzzed by schemathesis (issue 16): no request it allows, or malforms, gets a 500.

The app serves exact numpy models with small caps, so each generated request samples in milliseconds.
"""
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi

from gencc.serve.app import create_app
from gencc.serve.config import ServerConfig
from test_serve import digits_model, gan_model, points_model, served

APP = create_app(served(moons=points_model(), digits=digits_model(), gan=gan_model()),
                 ServerConfig(max_n=4, max_steps=5, max_queue=16, batch_wait_ms=0, preview_every=1))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module")
def client():
    """One client for every case: the app's lifespan (its worker) runs once, as under uvicorn."""
    with asgi.get_client(APP) as c:
        yield c


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case, client):
    response = case.call(session=client)
    case.validate_response(response, checks=(not_a_server_error,))
