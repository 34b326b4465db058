"""The device as a web page (``fakegradient device-ui``) in a real headless Chromium, against ``fakegradient serve``
(a protected MobileNetV2, a bearer token, ``--cors-origin`` for the page): the page's real top-1 is the Python
client's, the cloud's top-1 is a fake output, no request carries the key, the page preprocesses as the Python
client does, and a wrong key, a bad image and an unreachable server each get a clear message.

Needs Chromium (``make browser``, a prerequisite of ``make test``, installs Debian's ``chromium`` with apt-get) and Playwright for Python (the dev
extra); skipped, with the reason, where either is missing. ``FAKEGRADIENT_SCREENSHOT=docs/device-ui.png`` also
saves the screenshot the end-to-end test takes there, in 256 colours (how the README's one is made)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_server_support import serve_subprocess

from fakegradient import Key, models
from fakegradient.cli import main
from fakegradient.data import foolbox_imagenet
from fakegradient.serving.client import classify, preprocess
from fakegradient.serving.device_ui import PAGE_FILES, is_loopback

pytestmark = pytest.mark.slow

TOKEN = "5b0e8f2c7a9d41e3b6c8d0f2a4e6c8b1"
PHOTOS = [0, 4, 17]  # bull mastiff, strawberry, bald eagle
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                                   "(it is in the dev extra: pip install -e '.[dev]')")
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed: `make browser` installs Debian's chromium with apt-get where it can "
                    "(root and apt-get needed)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])  # root; small /dev/shm
        yield browser
        browser.close()


@contextmanager
def device_ui(*options: str) -> Iterator[str]:
    """``fakegradient device-ui --port 0``: the page's URL once it serves."""
    process = subprocess.Popen([sys.executable, "-m", "fakegradient.cli", "device-ui", "--port", "0", *options],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()
        found = re.search(r"device page on (http://\S+?)/ ", line)
        assert found, line + process.stdout.read() if process.poll() is not None else line
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, browser):
    """The protected MobileNetV2 served with a token to the page's origin only, its key, the class names."""
    root = tmp_path_factory.mktemp("device_ui")
    assert main(["protect", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--out", str(root / "cloud"),
                 "--key", str(root / "key.json")]) == 0
    (root / "token").write_text(TOKEN + "\n")
    categories = models.get_weights("mobilenet_v2", "IMAGENET1K_V1").meta["categories"]
    (root / "labels.txt").write_text("\n".join(categories) + "\n")
    samples = foolbox_imagenet()
    with device_ui("--labels", str(root / "cloud")) as page_url, serve_subprocess([root / "cloud"], "--threads", "1", "--token-file",
                                                   str(root / "token"), "--cors-origin", page_url) as (_, server):
        yield {"root": root, "page": page_url, "server": server, "key": Key.load(root / "key.json"),
               "categories": categories, "photos": [samples[i].path for i in PHOTOS], "samples": samples}


@pytest.fixture
def page(browser, deployment):
    """A fresh page of the device UI that records every request it makes and every script error."""
    context = browser.new_context(viewport={"width": 1180, "height": 900})
    page = context.new_page()
    page.requests, page.errors = [], []
    context.on("request", lambda request: page.requests.append(request))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
    page.goto(deployment["page"] + "/")
    yield page
    context.close()


def run_page(page, server: str, key: Path, photos: list[Path], *, labels: Path | None = None,
             token: str | None = TOKEN) -> None:
    """Fill the form, click Classify, wait until the page is done or shows an error."""
    page.fill("#server-url", server)
    page.fill("#token", token or "")
    page.set_input_files("#key-file", str(key))
    page.set_input_files("#photos", [str(p) for p in photos])
    if labels is not None:
        page.set_input_files("#labels-file", str(labels))
    page.click("#classify")
    done = page.locator("#status", has_text=re.compile("^Done"))
    done.or_(page.locator("#error:visible")).wait_for(timeout=60_000)  # (the page's CSP forbids eval: no wait_for_function)


def page_error(page) -> str:
    return page.inner_text("#error") if page.is_visible("#error") else ""


def secrets_of(key: Key) -> list[bytes]:
    """What a leak of the key would look like in a request: its permutation, inverse or real positions as text
    (JSON, comma-separated) or as binary integers and floats of any common width (a prefix of 16 entries)."""
    inverse = np.argsort(key.permutation)
    needles = []
    for array in (key.permutation, inverse, key.permutation[: key.n_real]):
        head = array[:16]
        needles += [json.dumps(head.tolist())[1:-1].encode(), ",".join(map(str, head)).encode()]
        needles += [head.astype(dtype).tobytes() for dtype in ("<i2", "<i4", "<i8", "<f4", "<f8", ">i4")]
    return needles


def test_the_page_classifies_as_the_python_client_and_the_key_never_leaves_it(page, deployment, tmp_path):
    photos, key = deployment["photos"], deployment["key"]
    run_page(page, deployment["server"], deployment["root"] / "key.json", photos)  # names from device-ui --labels
    assert page_error(page) == "" and page.errors == []
    assert page.inner_text("#status").startswith("Done: 3 of 3 photos classified")
    python = classify(deployment["server"], key, photos, token=TOKEN, labels=deployment["categories"])
    for path, expected in zip(photos, python, strict=True):
        row = page.locator(f'[data-photo="{path.name}"]')
        real_top1, position = int(row.get_attribute("data-top1")), int(row.get_attribute("data-cloud-position"))
        assert real_top1 == expected.topk[0][0], path.name
        assert row.locator("ol.top li").first.locator(".name").inner_text() == deployment["categories"][real_top1]
        assert key.is_fake(position) and row.get_attribute("data-cloud-fake") == "true", path.name
        assert "fake output" in row.locator(".cloud").inner_text()

    infers = [r for r in page.requests if r.method == "POST" and r.url.endswith("/infer")]
    assert len(infers) == 3 and all(len(r.post_data_buffer) > 3 * 224 * 224 * 4 for r in infers)  # real bodies
    needles = secrets_of(key)
    for request in page.requests:
        seen = [request.url.encode(), json.dumps(request.all_headers()).encode(), request.post_data_buffer or b""]
        leaked = [n for n in needles for part in seen if n in part]
        assert not leaked, f"{request.method} {request.url} carries the key"

    shot = tmp_path / "device-ui.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.width >= 1000 and image.height >= 600
    if target := os.environ.get("FAKEGRADIENT_SCREENSHOT"):  # 256 colours: a third of the size, for the README
        with Image.open(shot) as image:
            image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)


# Pillow and Chromium decode JPEG with libjpeg-turbo, and the page resamples with Pillow's algorithm (fixed-point
# weights, two 8-bit passes) and normalises in float32 as numpy does, so the arrays are expected to agree; the
# tolerance allows what may still differ: another libjpeg-turbo build rounding a few pixels of the decode, or a
# weight one fixed-point step apart where a compiler fuses multiply-adds. It is one 8-bit level after
# normalisation (1 / 255 / std, at most 0.0175) on at most 1 % of the values, and a mean |difference| under 1e-4.
LEVEL = 1 / 255 / 0.224


def test_the_page_preprocesses_the_20_photos_as_the_python_client(page, deployment):
    spec = models.preprocess_spec(models.get_weights("mobilenet_v2", "IMAGENET1K_V1"))
    photos = [s.path for s in deployment["samples"]]
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in photos]
    tensors = page.evaluate("""async ([photos, spec]) => {
        const device = await import('/preprocess.js');
        const out = [];
        for (const photo of photos) {
            const blob = new Blob([Uint8Array.from(atob(photo), (c) => c.charCodeAt(0))], {type: 'image/jpeg'});
            const {tensor} = await device.preprocess(blob, spec, 'photo');
            out.push(btoa(Array.from(new Uint8Array(tensor.buffer), (b) => String.fromCharCode(b)).join('')));
        }
        return out;
    }""", [encoded, spec])
    for path, text in zip(photos, tensors, strict=True):
        browser_tensor = np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(3, 224, 224)
        python_tensor = preprocess(path, spec)
        difference = np.abs(browser_tensor - python_tensor)
        assert difference.max() <= LEVEL * 1.001, (path.name, difference.max())
        assert (difference > 1e-6).mean() <= 0.01, (path.name, (difference > 1e-6).mean())
        assert difference.mean() < 1e-4, (path.name, difference.mean())


def test_a_half_transparent_png_preprocesses_as_in_python(page, tmp_path):
    """Both composite on black (round(c * alpha / 255)); the canvas stores colours premultiplied, so where
    0 < alpha < 255 its round trip may move a channel by one level, and under alpha 0 both give black."""
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    rgba[:4, :, 3], rgba[4:8, :, 3] = 0, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "logo.png")
    spec = {"resize": 32, "crop": 32, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "interpolation": "bilinear"}
    text = page.evaluate("""async ([photo, spec]) => {
        const device = await import('/preprocess.js');
        const blob = new Blob([Uint8Array.from(atob(photo), (c) => c.charCodeAt(0))], {type: 'image/png'});
        const {tensor} = await device.preprocess(blob, spec, 'logo.png');
        return btoa(Array.from(new Uint8Array(tensor.buffer), (b) => String.fromCharCode(b)).join(''));
    }""", [base64.b64encode((tmp_path / "logo.png").read_bytes()).decode(), spec])
    browser_tensor = np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(3, 32, 32)
    difference = np.abs(browser_tensor - preprocess(tmp_path / "logo.png", spec))
    alpha = rgba[..., 3]
    assert difference[:, (alpha == 0) | (alpha == 255)].max() < 1e-6
    assert difference.max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_the_page_resamples_as_pillow(page, interpolation):
    """Random pixels, down and up to odd sizes: the page's resize against Pillow's, to one level on 0.1 %."""
    rng = np.random.default_rng(0)
    for (height, width), (out_height, out_width) in [((37, 53), (17, 24)), ((20, 13), (41, 27)), ((64, 48), (64, 31))]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        rgba = np.concatenate([pixels, np.full((height, width, 1), 255, np.uint8)], axis=2)
        resized = page.evaluate("""async ([rgba, size, interpolation]) => {
            const device = await import('/preprocess.js');
            const data = Uint8ClampedArray.from(atob(rgba), (c) => c.charCodeAt(0));
            const out = device.resize(data, size[0], size[1], size[2], size[3], interpolation);
            return Array.from(out);
        }""", [base64.b64encode(rgba.tobytes()).decode(), [width, height, out_width, out_height], interpolation])
        page_pixels = np.asarray(resized, dtype=np.int16).reshape(out_height, out_width, 4)[..., :3]
        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[interpolation]
        pillow = np.asarray(Image.fromarray(pixels).resize((out_width, out_height), resample), dtype=np.int16)
        difference = np.abs(page_pixels - pillow)
        assert difference.max() <= 1 and (difference > 0).mean() <= 0.001, (interpolation, difference.max())


def test_the_page_writes_json_as_python_does_for_the_key_checksum(page):
    """The key file's checksum is a SHA-256 of Python's sorted, compact, ASCII JSON: the page must write floats
    (20.0, 1e-05, 1e+16), integers and strings (accents, emoji, control characters, DEL) exactly as Python."""
    values = [{"scale": 20.0, "n": 20, "b": [0.1, 1e-05, 0.0001, 1e16, 1234567890123456.0, -0.0, 1.5e-7, 2.5e300]},
              {"head": "classifier.1", "z": "é \u2603 \U0001f600 \x00\x1f\x7f \" \\ \n\t", "a": [True, False, None]},
              {"format": "fakegradient-key", "permutation": [3, 0, 2, 1], "scale": None, "seeded": True}]
    texts = [json.dumps(v) for v in values]
    written = page.evaluate("""async (texts) => {
        const keyfile = await import('/keyfile.js');
        return texts.map(keyfile.canonicalJson);
    }""", texts)
    assert written == [json.dumps(v, sort_keys=True, separators=(",", ":")) for v in values]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_key_for_another_model_is_refused_before_any_photo_is_sent(page, deployment, tmp_path):
    key = deployment["key"]
    other = Key(key.permutation, key.n_real, key.method, key.scale, "0" * 64, key.head)
    other.save(tmp_path / "other.key")
    run_page(page, deployment["server"], tmp_path / "other.key", deployment["photos"][:1])
    message = page_error(page)
    assert "Wrong key: this key belongs to another model" in message and "0000000000000000" in message, message
    assert key.model_fingerprint[:16] in message
    assert not [r for r in page.requests if r.url.endswith("/infer")]


def test_a_tampered_key_file_is_refused(page, deployment, tmp_path):
    payload = json.loads((deployment["root"] / "key.json").read_text())
    payload["permutation"][:2] = payload["permutation"][1::-1]  # still a permutation: only the checksum tells
    (tmp_path / "tampered.key").write_text(json.dumps(payload))
    run_page(page, deployment["server"], tmp_path / "tampered.key", deployment["photos"][:1])
    assert "has been modified or corrupted (checksum mismatch)" in page_error(page)


def test_a_labels_file_picked_in_the_page_is_used_and_checked(page, deployment, tmp_path):
    names = [f"name {i}" for i in range(1000)]
    (tmp_path / "labels.json").write_text(json.dumps(names))
    run_page(page, deployment["server"], deployment["root"] / "key.json", deployment["photos"][:1],
             labels=tmp_path / "labels.json")
    top1 = int(page.locator("[data-top1]").get_attribute("data-top1"))
    assert page.locator("ol.top li .name").first.inner_text() == names[top1]
    (tmp_path / "short.txt").write_text("\n".join(names[:999]))
    page.set_input_files("#labels-file", str(tmp_path / "short.txt"))
    page.click("#classify")
    page.locator("#error:visible").wait_for(timeout=60_000)
    assert page_error(page) == "999 labels (short.txt) for a key of 1000 classes"


def test_a_bad_image_is_reported_and_the_others_are_classified(page, deployment, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    run_page(page, deployment["server"], deployment["root"] / "key.json",
             [tmp_path / "notes.jpg", deployment["photos"][0]])
    assert page.locator('[data-photo="notes.jpg"] .row-error').inner_text() == "notes.jpg is not a readable image"
    assert page.locator(f'[data-photo="{deployment["photos"][0].name}"]').get_attribute("data-top1") is not None
    assert page.inner_text("#status").startswith("Done: 1 of 2 photos classified, 1 failed")


def test_an_unreachable_server_is_a_clear_message(page, deployment):
    url = f"http://127.0.0.1:{free_port()}"
    run_page(page, url, deployment["root"] / "key.json", deployment["photos"][:1])
    assert page_error(page).startswith(f"Cannot reach the server at {url}: is it running")


def test_a_server_that_does_not_allow_the_page_says_which_origin_to_allow(browser, deployment):
    """The page opened at http://localhost:PORT (another origin than the allowed http://127.0.0.1:PORT)."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(deployment["page"].replace("127.0.0.1", "localhost") + "/")
    run_page(page, deployment["server"], deployment["root"] / "key.json", deployment["photos"][:1])
    message = page_error(page)
    context.close()
    origin = deployment["page"].replace("127.0.0.1", "localhost")
    assert f"answers but does not let this page call it: start it with --cors-origin {origin}" in message, message


def test_a_missing_token_is_the_servers_401(page, deployment):
    run_page(page, deployment["server"], deployment["root"] / "key.json", deployment["photos"][:1], token=None)
    assert page_error(page) == ("the server answered 401: a bearer token is needed "
                                "(Authorization: Bearer <token>)")


def test_the_page_server_serves_the_page_files_and_nothing_else():
    import urllib.error
    import urllib.request

    with device_ui() as url:
        media = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
        for path, name in PAGE_FILES.items():
            with urllib.request.urlopen(url + path, timeout=10) as answer:
                assert answer.headers["Content-Type"].startswith(media[Path(name).suffix]) and answer.read()
                assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
        with urllib.request.urlopen(url + "/labels.json", timeout=10) as answer:
            assert json.loads(answer.read()) is None  # no --labels
        for path in ("/../pyproject.toml", "/__init__.py", "/key.json"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + path, timeout=10)
            assert refused.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url + "/", data=b"x"), timeout=10)
        assert refused.value.code == 405


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.5", False), ("device.example", False)])
def test_a_host_other_than_this_machine_is_warned_about(host, loopback):
    assert is_loopback(host) is loopback  # serve_page prints a warning unless loopback


def test_device_ui_bad_options_are_one_line_errors(capsys):
    assert main(["device-ui", "--port", "70000"]) == 2
    assert main(["device-ui", "--host", "no-such-host.invalid", "--port", "0"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: --port must be in 0..65535, got 70000"
    assert err[1].startswith("error: cannot listen on no-such-host.invalid:0") and len(err) == 2


def test_the_wheel_ships_the_page(tmp_path):
    from test_packaging import build_wheel

    with zipfile.ZipFile(build_wheel(tmp_path)) as wheel:
        names = set(wheel.namelist())
    assert {f"fakegradient/serving/device_ui/{name}" for name in PAGE_FILES.values()} <= names
