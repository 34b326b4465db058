"""CORS: the server lets a browser page of another origin call it only when the operator allows that origin
(``serve --cors-origin``, none by default); the page may then send the token and the binary-extension header and
read that header back. (The page itself, in a browser, is tested in test_device_ui.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_server_support import request, running_server, tiny_models, tiny_request

from fakegradient.cli import main
from fakegradient.errors import InvalidArgument
from fakegradient.serving.protocol import HEADER_LENGTH
from fakegradient.serving.server import Access, Limits, cors_origin

ALLOWED = "http://127.0.0.1:8080"
TOKEN = "0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f"
LIMITS = Limits(max_body_bytes=2**20, max_batch=8)


def preflight(address, origin: str, method: str = "POST", headers: str = f"authorization,content-type,{HEADER_LENGTH}"):
    return request(address, "OPTIONS", "/v2/models/tiny/infer",
                   headers={"Origin": origin, "Access-Control-Request-Method": method,
                            "Access-Control-Request-Headers": headers.lower()})


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


@pytest.fixture(scope="module")
def allowing(tmp_path_factory):
    access = Access(token=TOKEN, cors_origins=(ALLOWED, "https://device.example"))
    with running_server(tiny_models(tmp_path_factory.mktemp("cors")), LIMITS, access) as address:
        yield address


def test_a_preflight_from_an_allowed_origin_is_answered_without_the_token(allowing):
    status, headers, _ = preflight(allowing, ALLOWED)
    headers = lower(headers)
    assert status == 200 and headers["access-control-allow-origin"] == ALLOWED
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", HEADER_LENGTH.lower()} <= allowed
    assert {"GET", "POST"} <= {m.strip() for m in headers["access-control-allow-methods"].split(",")}


@pytest.mark.parametrize("origin", ["http://127.0.0.1:8081", "http://localhost:8080", "https://127.0.0.1:8080",
                                   "null", "http://evil.example"])
def test_a_preflight_from_another_origin_gets_no_allow_header(allowing, origin):
    status, headers, _ = preflight(allowing, origin)
    assert status == 400 and "access-control-allow-origin" not in lower(headers)


def test_a_refused_preflight_answers_a_json_error(allowing):
    """As every other error (it was plain text)."""
    for origin, method in (("http://evil.example", "POST"), (ALLOWED, "DELETE")):
        status, headers, body = preflight(allowing, origin, method)
        assert status == 400 and lower(headers)["content-type"] == "application/json"
        payload = json.loads(body)
        assert list(payload) == ["error"] and payload["error"].startswith("CORS preflight refused: Disallowed CORS")


def test_a_preflight_for_other_headers_or_methods_is_refused(allowing):
    assert preflight(allowing, ALLOWED, headers="x-other")[0] == 400
    assert preflight(allowing, ALLOWED, method="DELETE")[0] == 400


def test_answers_to_an_allowed_page_let_it_read_the_binary_header_and_the_errors(allowing):
    x = np.zeros((1, 3, 2, 2), np.float32)
    body = tiny_request(x, parameters={"binary_data_output": True})
    status, headers, _ = request(allowing, "POST", "/v2/models/tiny/infer", body,
                                 {"Origin": ALLOWED, "Authorization": f"Bearer {TOKEN}"})
    headers = lower(headers)
    assert status == 200 and headers["access-control-allow-origin"] == ALLOWED
    assert HEADER_LENGTH.lower() in headers["access-control-expose-headers"].lower()
    assert HEADER_LENGTH.lower() in headers
    status, headers, answer = request(allowing, "GET", "/v2/models/tiny", headers={"Origin": ALLOWED})
    assert status == 401 and lower(headers)["access-control-allow-origin"] == ALLOWED  # the page reads why
    assert "bearer token" in json.loads(answer)["error"]
    status, headers, _ = request(allowing, "GET", "/v2/health/live", headers={"Origin": "http://evil.example"})
    assert status == 200 and "access-control-allow-origin" not in lower(headers)


def test_without_cors_origins_the_server_sends_no_cors_headers(tmp_path):
    with running_server(tiny_models(tmp_path), LIMITS) as address:
        status, headers, _ = preflight(address, ALLOWED)
        assert status == 405 and not any(k.startswith("access-control-") for k in lower(headers))
        status, headers, _ = request(address, "GET", "/v2/health/live", headers={"Origin": ALLOWED})
        assert status == 200 and not any(k.startswith("access-control-") for k in lower(headers))


@pytest.mark.parametrize("typed, origin", [("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
                                           ("HTTP://LocalHost:8080/", "http://localhost:8080"),
                                           ("https://device.example:443", "https://device.example"),
                                           ("http://[::1]:8080", "http://[::1]:8080")])
def test_origins_are_written_as_browsers_send_them(typed, origin):
    assert cors_origin(typed) == origin
    assert Access(cors_origins=(typed, origin)).cors_origins == (origin,)


@pytest.mark.parametrize("typed", ["*", "127.0.0.1:8080", "ftp://host", "http://host/path", "http://host?x=1",
                                   "http://user@host", "http://host:99999", "http://"])
def test_anything_else_is_refused(typed, tmp_path, capsys):
    with pytest.raises(InvalidArgument, match="is not an origin"):
        cors_origin(typed)
    assert main(["serve", str(tmp_path), "--cors-origin", typed]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CORS origin") and err.count("\n") == 1, err
