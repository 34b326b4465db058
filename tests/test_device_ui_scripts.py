"""The device page's scripts (device_ui/*.js) run under Node.js where Chromium is absent: the rules they share with
the Python client — transparency composited on black, preprocessing parameters bounded, redirects refused and
answers bounded against a malicious server — give the same results. test_device_ui.py runs the page in Chromium.

Node's fetch is not Chromium's (a refused redirect is a plain 3xx here, an opaque one in a browser; the page checks
both); skipped where Node.js is missing."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_client_hostile import HUGE, hostile, redirect, send, stream

from fakegradient.data import on_black
from fakegradient.errors import FakeGradientError
from fakegradient.serving.client import MAX_SIDE, answer_limit, check_spec

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js is not installed (test_device_ui.py runs the page's "
                                                     "scripts in Chromium)")


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> Path:
    """The page's ES modules in a folder Node reads as modules."""
    folder = tmp_path_factory.mktemp("device_ui_scripts")
    for item in resources.files("fakegradient.serving.device_ui").iterdir():
        if item.name.endswith(".js"):
            (folder / item.name).write_bytes(item.read_bytes())
    (folder / "package.json").write_text('{"type": "module"}')
    return folder


def node(scripts: Path, body: str, argument: Any = None) -> Any:
    """Run ``body`` (an async function body given ``arg``) in Node with the page's modules; its JSON result."""
    program = ("import * as preprocess from './preprocess.js';\nimport * as cloud from './cloud.js';\n"
               f"const arg = {json.dumps(argument)};\n"
               f"const result = await (async () => {{ {body} }})();\n"
               "process.stdout.write(JSON.stringify(result));\n")
    (scripts / "run.mjs").write_text(program)
    done = subprocess.run([NODE, "run.mjs"], cwd=scripts, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_page_composites_transparency_on_black_as_python(scripts):
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (9, 13, 4), dtype=np.uint8)
    rgba[0, :, 3], rgba[1, :, 3] = 0, 255
    page = node(scripts, "return Array.from(preprocess.onBlack(Uint8ClampedArray.from(arg)));", rgba.ravel().tolist())
    page = np.asarray(page, np.uint8).reshape(9, 13, 4)
    assert (page[..., 3] == 255).all()
    np.testing.assert_array_equal(page[..., :3], np.asarray(on_black(Image.fromarray(rgba, "RGBA"))))


SPEC = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.mark.parametrize("change", [{"resize": 20000}, {"resize": MAX_SIDE + 1, "crop": 224}, {"std": [1e-30, 1, 1]},
                                    {"mean": [1e30, 0, 0]}, {}, {"resize": 600, "crop": 600}], ids=str)
def test_the_page_bounds_preprocessing_parameters_as_python(scripts, change):
    spec = SPEC | change
    page = node(scripts, "try { preprocess.checkSpec(arg); return 'accepted'; } catch (e) { return e.message; }", spec)
    try:
        check_spec(spec)
        python = "accepted"
    except FakeGradientError as exc:
        python = str(exc)
    assert page == python


CALL = """
const client = new cloud.CloudClient(arg.url, "0123456789abcdef0123456789abcdef");
try {
  if (arg.infer) return await client.infer({name: "m", input: "input", output: "logits"}, new Float32Array(12), 2, 6);
  return await client.model("m");
} catch (e) { return `${e.constructor.name}: ${e.message}`; }
"""


def test_the_page_refuses_a_redirect_and_sends_nothing_elsewhere(scripts):
    with hostile() as (elsewhere, other_url), \
            hostile({("GET", "/v2/models/m"): redirect(307, other_url + "/v2/models/m"),
                     ("POST", "/v2/models/m/infer"): redirect(308, other_url + "/v2/models/m/infer")}) as (_, url):
        for infer, path in ((False, "/v2/models/m"), (True, "/v2/models/m/infer")):
            message = node(scripts, CALL, {"url": url, "infer": infer})
            assert message == (f"Unreachable: the server redirected {path} elsewhere: refused, so that neither the "
                               "token nor the photos go there; if another server is meant, enter its address")
    assert elsewhere.requests == []


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "until-close"])
def test_the_page_refuses_a_huge_infer_answer_as_it_arrives(scripts, declare):
    head = json.dumps({"outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, HUGE // 4]}]}).encode()
    with hostile() as (cloud, url):
        cloud.behaviours[("POST", "/v2/models/m/infer")] = stream(cloud, HUGE, head, declare)
        message = node(scripts, CALL, {"url": url, "infer": True})
    limit = answer_limit(1, 6)
    expected = (f"is {HUGE} bytes, over the {limit} expected: refused" if declare else
                f"is over the {limit} bytes expected: refused")
    assert message == f"DeviceError: the server's answer to /v2/models/m/infer {expected}"
    assert cloud.sent < HUGE // 4, cloud.sent


def test_the_page_cuts_a_huge_error_answer(scripts):
    with hostile({("GET", "/v2/models/m"): send(500, b"y" * (8 * 2**20))}) as (_, url):
        message = node(scripts, CALL, {"url": url, "infer": False})
    assert message == "DeviceError: the server answered 500: " + "y" * 300
