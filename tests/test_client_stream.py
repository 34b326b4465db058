"""The device client against a small fake v2 server: results streamed per batch, each bad file or bad batch
one ``error:`` line and the rest goes on, every answer and config value validated, model names quoted."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fakegradient import FakeGradientError, Key
from fakegradient.cli import main
from fakegradient.serving.client import Classification, Failure, classify, classify_iter

HEADER = "Inference-Header-Content-Length"
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
SPEC = {"resize": 8, "crop": 8, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "interpolation": "bilinear"}
KEY = Key(permutation=np.array([4, 0, 5, 2, 1, 3]), n_real=3, method="fake-gradient", scale=None,
          model_fingerprint="ab" * 32)

# an answer: (HTTP status, body, headers); a fault turns the right answer (encrypted outputs) into another
Answer = tuple[int, bytes, dict[str, str]]


DIE: Answer = (0, b"", {})  # no answer: the connection is dropped and the server stops listening


def binary_answer(out: np.ndarray, shape: list[int] | None = None, datatype: str = "FP32",
                  data: bytes | None = None) -> Answer:
    data = out.astype("<f4").tobytes() if data is None else data
    head = json.dumps({"outputs": [{"name": "logits", "datatype": datatype, "shape": shape or list(out.shape),
                                    "parameters": {"binary_data_size": len(data)}}]}).encode()
    return 200, head + data, {HEADER: str(len(head))}


def json_answer(payload: Any, status: int = 200) -> Answer:
    return status, json.dumps(payload).encode(), {}


class FakeServer:
    """A v2 server for one model ``name`` whose real logits are 10 × the mean of each colour channel, so the
    decrypted top-1 of a red, green or blue picture is its colour. ``fault(call, outputs)`` may replace the
    answer to infer call ``call`` (0, 1, …); None leaves it. ``answers`` replaces whole endpoints."""

    def __init__(self, name: str = "m", max_batch: Any = 2,
                 fault: Callable[[int, np.ndarray], Answer | None] | None = None,
                 parameters: dict[str, Any] | None = None, answers: dict[str, Answer] | None = None):
        self.name, self.max_batch, self.fault = name, max_batch, fault
        self.parameters = parameters or {"fingerprint": KEY.model_fingerprint, "preprocess": SPEC,
                                         "categories": list(COLOURS)}
        self.answers = answers or {}
        self.batches: list[int] = []  # batch size of each infer call
        self.paths: list[str] = []  # raw request paths

    def answer(self, method: str, path: str, body: bytes, headers: Any) -> Answer:
        self.paths.append(path)
        if (method, path) in self.answers:
            return self.answers[method, path]
        model = f"/v2/models/{urllib.parse.quote(self.name, safe='')}"
        if method == "POST" and path == "/v2/repository/index":
            return json_answer([{"name": self.name}])
        if not path.startswith(model + "/") and path != model:
            return json_answer({"error": f"unknown model {urllib.parse.unquote(path.split('/')[3])!r}"}, 404)
        rest = path.removeprefix(model)
        if method == "GET" and rest == "":
            return json_answer({"name": self.name, "inputs": [{"name": "input", "shape": [-1, 3, 8, 8]}],
                                "outputs": [{"name": "logits", "shape": [-1, 6]}], "parameters": self.parameters})
        if method == "GET" and rest == "/config":
            return json_answer({"name": self.name, "max_batch_size": self.max_batch})
        if method == "POST" and rest == "/infer":
            length = int(headers[HEADER])
            shape = json.loads(body[:length])["inputs"][0]["shape"]
            batch = np.frombuffer(body[length:], "<f4").reshape(shape)
            self.batches.append(len(batch))
            real = 10 * batch.mean(axis=(2, 3))
            out = np.empty((len(batch), 6), np.float32)
            out[:, KEY.permutation] = np.concatenate([real, real - 1], axis=1)
            faulty = self.fault(len(self.batches) - 1, out) if self.fault else None
            return binary_answer(out) if faulty is None else faulty
        return json_answer({"error": "not found"}, 404)


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[FakeServer, str]]]:
    """serve(**FakeServer kwargs) → (the fake, its URL), in a thread; stopped after the test."""
    running: list[ThreadingHTTPServer] = []

    def start(**kwargs: Any) -> tuple[FakeServer, str]:
        fake = FakeServer(**kwargs)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def handle_one(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = fake.answer(method, self.path, body, self.headers)
                if answer is DIE:
                    self.close_connection = True
                    threading.Thread(target=httpd.shutdown).start()
                    return
                status, payload, headers = answer
                self.send_response(status)
                for name, value in {"Content-Length": str(len(payload)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self.handle_one("GET")

            def do_POST(self) -> None:
                self.handle_one("POST")

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        running.append(httpd)
        return fake, f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in running:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Solid red, green and blue PNGs, a text file named .jpg, a missing file, a 20000×2 PNG; and the key."""
    made = {}
    for name, rgb in COLOURS.items():
        made[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (16, 12), rgb).save(made[name])
    made["text"] = tmp_path / "notes.jpg"
    made["text"].write_text("not an image")
    made["missing"] = tmp_path / "missing.png"
    made["thin"] = tmp_path / "thin.png"
    Image.new("L", (20000, 2)).save(made["thin"])
    made["key"] = tmp_path / "key.json"
    KEY.save(made["key"])
    return made


def run(capsys, url: str, files: dict[str, Path], *names: str, extra: tuple[str, ...] = ()) -> tuple[int, list, list]:
    """``fakegradient classify --server url`` in-process: (exit code, stdout lines, stderr lines)."""
    code = main(["classify", "--server", url, "--key", str(files["key"]), "--top", "1", *extra,
                 *(str(files[n]) for n in names)])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def labels(lines: list[str]) -> list[str]:
    return [line.split(" ")[0] + " " + line.split(" ")[1] for line in lines]


SIX = ("red", "green", "blue", "red", "green", "blue")


def test_all_good_images_are_classified_in_batches_of_the_servers_limit(serve, files, capsys):
    fake, url = serve(max_batch=2)
    code, out, err = run(capsys, url, files, *SIX)
    assert (code, err) == (0, [])
    assert labels(out) == ["red.png: red", "green.png: green", "blue.png: blue"] * 2
    assert fake.batches == [2, 2, 2]


def test_each_bad_file_is_one_error_line_and_the_rest_is_classified(serve, files, capsys):
    fake, url = serve(max_batch=2)
    code, out, err = run(capsys, url, files, "red", "text", "green", "missing", "thin", "blue")
    assert code == 1
    assert labels(out) == ["red.png: red", "green.png: green", "blue.png: blue"]
    assert len(err) == 3 and all(line.startswith("error: ") for line in err), err
    assert "notes.jpg is not a readable image" in err[0]
    assert "no such image" in err[1] and "missing.png" in err[1]
    assert "thin.png is refused: 20000x2" in err[2]
    assert fake.batches == [2, 1]  # the bad files are skipped, not sent


def test_results_stream_as_each_batch_comes_back(serve, files):
    fake, url = serve(max_batch=2)
    results = classify_iter(url, KEY, [files[n] for n in SIX])
    first = next(results)
    assert isinstance(first, Classification) and first.topk[0][1] == "red"
    assert fake.batches == [2]  # the first result is out before the second batch is sent
    assert len(list(results)) == 5 and fake.batches == [2, 2, 2]


def test_a_server_dying_mid_run_keeps_the_results_already_returned(serve, files, capsys):
    _, url = serve(max_batch=2, fault=lambda call, out: DIE if call == 1 else None)
    code, out, err = run(capsys, url, files, *SIX)
    assert code == 1
    assert labels(out) == ["red.png: red", "green.png: green"]
    assert len(err) == 1 and err[0].startswith("error: cannot reach") and "4 of 6 images not classified" in err[0]


@pytest.mark.parametrize("fault", [
    pytest.param(lambda out: binary_answer(out[:-1]), id="a proxy drops a row"),
    pytest.param(lambda out: binary_answer(out[:, :-1]), id="too narrow"),
    pytest.param(lambda out: binary_answer(np.where(out > 5, np.nan, out)), id="not finite"),
    pytest.param(lambda out: binary_answer(out, shape=[4, 6]), id="shape says 4 rows"),
    pytest.param(lambda out: binary_answer(out, data=out.astype("<f4").tobytes() + b"\0" * 4),
                 id="binary data too long"),
    pytest.param(lambda out: binary_answer(out, datatype="FP64", data=out.astype("<f8").tobytes()), id="FP64"),
    pytest.param(lambda out: json_answer({"outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 6],
                                                       "data": out[0].tolist()}]}), id="JSON drops a row"),
    pytest.param(lambda out: json_answer({"outputs": []}), id="no output"),
    pytest.param(lambda out: (200, b"{not json", {HEADER: "9"}), id="not JSON"),
    pytest.param(lambda out: (200, b"{}", {HEADER: "abc"}), id="bad header length"),
    pytest.param(lambda out: (200, b"{}", {HEADER: "99"}), id="header length past the body"),
    pytest.param(lambda out: json_answer({"error": "out of\nmemory"}, 500), id="HTTP 500"),
    pytest.param(lambda out: (502, b"<html>\n<h1>Bad gateway</h1>\n</html>", {}), id="HTML 502"),
])
def test_a_bad_answer_fails_its_batch_only(serve, files, capsys, fault):
    fake, url = serve(max_batch=2, fault=lambda call, out: fault(out) if call == 1 else None)
    code, out, err = run(capsys, url, files, *SIX)
    assert code == 1
    assert labels(out) == ["red.png: red", "green.png: green", "green.png: green", "blue.png: blue"]
    assert len(err) == 2 and all(line.startswith("error: ") for line in err), err
    assert str(files["blue"]) in err[0] and str(files["red"]) in err[1]  # the batch's two files, named
    assert fake.batches == [2, 2, 2]


@pytest.mark.parametrize("value", [-1, 1.5, "many", True])
def test_an_invalid_max_batch_size_is_refused_before_anything_is_sent(serve, files, capsys, value):
    fake, url = serve(max_batch=value)
    code, out, err = run(capsys, url, files, "red", "green")
    assert (code, out, fake.batches) == (1, [], [])
    assert err == [f"error: the server's config has an invalid max_batch_size: {value!r}"]


@pytest.mark.parametrize("value", [0, None])
def test_max_batch_size_0_or_absent_sets_no_limit(serve, files, capsys, value):
    fake, url = serve(max_batch=value)
    assert run(capsys, url, files, *SIX)[0] == 0 and fake.batches == [6]


def test_a_server_without_a_config_endpoint_sets_no_limit(serve, files, capsys):
    fake, url = serve(answers={("GET", "/v2/models/m/config"): json_answer({"error": "not found"}, 404)})
    assert run(capsys, url, files, *SIX)[0] == 0 and fake.batches == [6]


@pytest.mark.parametrize("change", [
    {"crop": 16}, {"std": [1.0, 0.0, 1.0]}, {"mean": [0.0, 0.0]}, {"mean": None}, {"resize": -8},
    {"interpolation": "cubic"}, {"interpolation": ["bilinear"]}, {"std": [1.0, float("nan"), 1.0]},
], ids=str)
def test_invalid_preprocessing_parameters_are_refused(serve, files, capsys, change):
    fake, url = serve(parameters={"fingerprint": KEY.model_fingerprint, "preprocess": SPEC | change})
    code, out, err = run(capsys, url, files, "red")
    assert (code, out, fake.batches) == (1, [], [])
    assert len(err) == 1 and err[0].startswith("error: the server's preprocessing parameters are invalid")


@pytest.mark.parametrize("path, answer, message", [
    ("/v2/models/m", json_answer({"name": "m"}), "metadata of model 'm' is malformed"),
    ("/v2/models/m", json_answer({"name": "m", "inputs": [{}], "outputs": [{"name": "o"}]}), "malformed"),
    ("/v2/models/m", json_answer(["m"]), "malformed"),
    ("/v2/models/m", (200, b"<html>", {}), "is not JSON"),
    ("/v2/models/m/config", json_answer([1]), None),  # not an object: no limit stated
])
def test_malformed_metadata_is_one_line(serve, files, capsys, path, answer, message):
    _, url = serve(answers={("GET", path): answer})
    code, out, err = run(capsys, url, files, "red")
    if message is None:
        assert code == 0 and labels(out) == ["red.png: red"]
    else:
        assert code == 1 and len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("fingerprint", [None, 12, ["ab" * 32]])
def test_a_missing_or_malformed_fingerprint_is_refused(serve, files, capsys, fingerprint):
    fake, url = serve(parameters={"fingerprint": fingerprint, "preprocess": SPEC})
    code, out, err = run(capsys, url, files, "red")
    assert (code, out, fake.batches) == (1, [], [])
    assert err == ["error: model 'm' publishes no fakegradient fingerprint: is it protected?"]


def test_a_model_name_with_a_space_is_quoted(serve, files, capsys):
    fake, url = serve(name="mn v2")
    code, out, err = run(capsys, url, files, "red", extra=("--model-name", "mn v2"))
    assert (code, labels(out), err) == (0, ["red.png: red"], [])
    assert "/v2/models/mn%20v2/infer" in fake.paths
    code, out, err = run(capsys, url, files, "red", extra=("--model-name", "mn v3"))
    assert (code, out) == (1, [])
    assert err == ["error: server answered 404: unknown model 'mn v3'"]
    code, out, err = run(capsys, url, files, "red", extra=("--model-name", "a/../../b?x#y"))
    assert code == 1 and err == ["error: server answered 404: unknown model 'a/../../b?x#y'"]


def test_a_bad_server_url_is_one_line(files, capsys):
    code, _, err = run(capsys, "http://127.0.0.1:1 x", files, "red")
    assert code == 1 and len(err) == 1 and err[0].startswith("error: invalid server URL"), err


def test_python_api_classify_raises_on_the_first_failure(serve, files):
    _, url = serve(max_batch=2)
    with pytest.raises(FakeGradientError, match="not a readable image"):
        classify(url, KEY, [files["red"], files["text"]])
    results = list(classify_iter(url, KEY, [files["text"], files["red"]]))
    assert isinstance(results[0], Failure) and results[0].image == "notes.jpg"
    assert isinstance(results[1], Classification) and results[1].topk[0][1] == "red"
    assert [r.topk[0][1] for r in classify(url, KEY, [files["green"], files["blue"]])] == ["green", "blue"]


def test_the_cli_without_torch_never_prints_a_traceback(serve, files):
    _, url = serve(max_batch=2, fault=lambda call, out: binary_answer(out[:-1]) if call == 0 else None)
    code = ("import sys\nclass _Block:\n    def find_spec(self, name, *a):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch is blocked in this test')\n"
            "sys.meta_path.insert(0, _Block())\nfrom fakegradient.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    args = ["classify", "--server", url, "--key", files["key"], "--top", "1",
            *(files[n] for n in ("red", "green", "thin", "text", "blue"))]
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert labels(result.stdout.splitlines()) == ["blue.png: blue"]
    errors = result.stderr.splitlines()
    assert len(errors) == 4 and all(line.startswith("error: ") for line in errors), errors
