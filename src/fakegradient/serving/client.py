"""The device client: preprocess with Pillow + numpy, call a v2 server, decrypt with the key (or, for a
``device-head`` model, apply the head the device keeps to the features the server returns).

Imports no torch. Preprocessing reproduces torchvision's ImageClassification preset (resize the
shorter side with PIL, centre crop with torchvision's rounding, scale to [0, 1], normalise).
"""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..classify import Classification, Failure, Unreachable, stream
from ..data import open_rgb
from ..errors import FakeGradientError, KeyMismatch
from ..schemes.base import Secret
from ..labels import checked_names, read_labels
from ..terminal import escape_terminal
from .protocol import HEADER_LENGTH

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}

# The cloud is not trusted: what it sends is bounded before it is read, parsed or used.
MAX_JSON_ANSWER = 4 * 2**20  # metadata, model index, config (1,000 class names take ~30 KB)
MAX_ERROR_ANSWER = 64 * 2**10  # an error answer: one line of it is shown
MAX_ANSWER_SECONDS = 300.0  # to read one answer's body, however slowly it trickles (each read: ``timeout``)
JSON_BYTES_PER_VALUE = 32  # an FP32 output as JSON text ("-1.2345678e-38, ") is at most ~26 bytes
ANSWER_HEAD_BYTES = 64 * 2**10  # an infer answer's JSON head beside its values
MAX_OUTPUTS_PER_ROW = 2**18  # the width assumed when the caller does not know it (Python API)
MAX_SIDE = 1024  # preprocess.resize and crop: torchvision's presets go up to 600
MAX_ABS_MEAN, STD_RANGE = 1e3, (1e-3, 1e3)  # keeps (x / 255 - mean) / std finite and meaningful in float32
MAX_FINGERPRINT_CHARS = 256
MAX_MODELS_SEARCHED = 64  # models whose metadata is read to find the one for a key


def preprocess(path: str | Path, spec: dict[str, Any]) -> np.ndarray:
    """One image → (3, crop, crop) float32, as torchvision's preset ``spec`` would make it."""
    image = open_rgb(path)
    size, crop = int(spec["resize"]), int(spec["crop"])
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    image = image.resize(new_size, _RESAMPLE[spec.get("interpolation", "bilinear")])
    width, height = image.size
    top, left = round((height - crop) / 2.0), round((width - crop) / 2.0)
    array = np.asarray(image, dtype=np.uint8)[top : top + crop, left : left + crop]
    array = array.astype(np.float32) / 255.0
    mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
    return ((array - mean) / std).transpose(2, 0, 1).copy()


class ServerRefused(FakeGradientError):
    """The server answered with an HTTP error ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class ServerModel:
    name: str
    input_name: str
    output_name: str
    parameters: dict[str, Any]


class InferenceClient:
    """A minimal Open Inference Protocol v2 REST client (binary tensor data extension).

    Every answer is validated; a malformed one is a :class:`FakeGradientError`, a server that cannot be
    reached (or drops the connection) is :class:`Unreachable`."""

    def __init__(self, url: str, timeout: float = 60.0, token: str | None = None,
                 answer_seconds: float = MAX_ANSWER_SECONDS):
        self.url = url.rstrip("/")
        self.timeout = timeout  # seconds for each connect, send or read
        self.answer_seconds = answer_seconds  # seconds to read one answer's body in all
        self.token = token  # sent as ``Authorization: Bearer <token>`` on every request
        self._configs: dict[str, dict[str, Any]] = {}

    def _call(self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
              limit: int = MAX_JSON_ANSWER) -> tuple[bytes, Message]:
        """(body, headers) of the answer to ``path``; an answer over ``limit`` bytes is refused as it arrives,
        a redirect to another origin is refused before anything is sent there."""
        headers = dict(headers or {})
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            request = urllib.request.Request(self.url + path, data=body, headers=headers,
                                             method="POST" if body is not None else "GET")
            with _OPENER.open(request, timeout=self.timeout) as response:
                return _read_answer(response, limit, path, self.answer_seconds), response.headers
        except urllib.error.HTTPError as exc:
            detail: Any = exc.reason
            try:
                text = _read_some(exc, MAX_ERROR_ANSWER, self.answer_seconds).decode(errors="replace")
                detail = text if text.strip() else detail
                detail = json.loads(text).get("error", text)
            except (ValueError, AttributeError, OSError, RecursionError, http.client.HTTPException):
                pass
            finally:
                exc.close()
            one_line = escape_terminal(" ".join(str(detail).split())[:300])
            raise ServerRefused(exc.code, f"server answered {exc.code}: {one_line}") from None
        except (ValueError, http.client.InvalidURL) as exc:  # a space in the URL, a bad port
            raise FakeGradientError(f"invalid server URL {self.url!r}: {exc}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = escape_terminal(str(getattr(exc, "reason", exc) or type(exc).__name__))[:300]
            raise Unreachable(f"cannot reach {self.url}: {reason}") from None

    def _json(self, path: str, body: bytes | None = None) -> Any:
        answer, _ = self._call(path, body, {"Content-Type": "application/json"} if body is not None else None)
        try:
            return json.loads(answer)
        except (ValueError, RecursionError):
            raise FakeGradientError(f"the server's answer to {path} is not JSON (or nested too deeply)") from None

    def model(self, name: str | None = None, fingerprint: str | None = None) -> ServerModel:
        """Metadata of model ``name``; without a name, the only one served, else the one that publishes
        ``fingerprint`` (the device's secret's)."""
        if name is None:
            names = self._model_names()
            if len(names) != 1 and fingerprint is not None:
                return self._model_for(names, fingerprint)
            if len(names) != 1:
                raise FakeGradientError(f"the server has models {names}: name the one to use (--model-name)")
            name = names[0]
        meta = self._metadata(name)
        try:
            return ServerModel(_text(meta["name"]), _text(meta["inputs"][0]["name"]),
                               _text(meta["outputs"][0]["name"]), dict(meta.get("parameters") or {}))
        except (KeyError, IndexError, TypeError, ValueError):
            raise FakeGradientError(f"the server's metadata of model {name!r} is malformed") from None

    def _metadata(self, name: str) -> Any:
        return self._json(_model_path(name))

    def _index(self) -> Any:
        return self._json("/v2/repository/index", b"{}")

    def _config(self, name: str) -> Any:
        return self._json(_model_path(name) + "/config")

    def _model_names(self) -> list[str]:
        """The served models' names: from Triton's repository index, else KServe's model list."""
        try:
            index = self._index()
        except ServerRefused as refused:  # KServe has no repository index: GET /v2/models lists names
            if refused.status not in (404, 405):
                raise
            try:
                listing = self._json("/v2/models")
            except Unreachable:
                raise
            except FakeGradientError:
                raise refused from None
            index = [{"name": name} for name in listing["models"]] if isinstance(listing, dict) and isinstance(
                listing.get("models"), list) else None
        try:
            return [_text(entry["name"]) for entry in index]
        except (KeyError, TypeError, ValueError):
            raise FakeGradientError("the server's model index is malformed") from None

    def _model_for(self, names: list[str], fingerprint: str) -> ServerModel:
        """The one model among ``names`` (at most :data:`MAX_MODELS_SEARCHED`) publishing ``fingerprint``."""
        if len(names) > MAX_MODELS_SEARCHED:
            raise FakeGradientError(f"the server has {len(names)} models: name the one to use (--model-name)")
        found = []
        for name in names:
            model = self.model(name)
            published = model.parameters.get("fingerprint") or self.config_parameters(name).get("fingerprint")
            if published == fingerprint:
                found.append(model)
        if len(found) != 1:
            raise FakeGradientError(f"the server has models {names}, {len(found)} of them for this key: name the one "
                                    "to use (--model-name)")
        return found[0]

    def config(self, name: str) -> dict[str, Any]:
        """Triton's model config (our server has it too), {} if the server has none; fetched once."""
        if name not in self._configs:
            try:
                config = self._config(name)
            except Unreachable:
                raise
            except FakeGradientError:  # no config endpoint
                config = {}
            self._configs[name] = config if isinstance(config, dict) else {}
        return self._configs[name]

    def config_parameters(self, name: str) -> dict[str, Any]:
        """The config's ``parameters`` (Triton: ``{key: {"string_value": ...}}``) as plain values, the JSON ones
        (preprocess, categories) decoded: where Triton publishes what our server puts in the metadata."""
        entries = self.config(name).get("parameters")
        out: dict[str, Any] = {}
        for key, entry in (entries.items() if isinstance(entries, dict) else ()):
            value = entry.get("string_value") if isinstance(entry, dict) else None
            if isinstance(value, str) and key in ("preprocess", "categories"):
                try:
                    value = json.loads(value)
                except (ValueError, RecursionError):
                    pass  # refused by the checks that use it
            if value is not None:
                out[key] = value
        return out

    def max_batch(self, name: str) -> int | None:
        """The server's batch limit, from Triton's config endpoint (our server has it too); None if unknown."""
        value = self.config(name).get("max_batch_size")
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FakeGradientError(f"the server's config has an invalid max_batch_size: {value!r}")
        return value or None  # 0: Triton's "no batching limit stated"

    def infer(self, model: ServerModel, batch: np.ndarray, width: int | None = None) -> np.ndarray:
        """(B, C, H, W) float32 → (B, outputs) float32, tensors sent and received as binary data.

        ``width``: the outputs expected per image (the key's ``n_outputs``), which bounds the answer's size; an
        answer larger than B × width values as JSON text (plus a head) is refused as it arrives."""
        data = np.ascontiguousarray(batch, dtype="<f4").tobytes()
        header = json.dumps({
            "inputs": [{"name": model.input_name, "shape": list(batch.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": len(data)}}],
            "outputs": [{"name": model.output_name, "parameters": {"binary_data": True}}],
        }).encode()
        limit = answer_limit(len(batch), width or MAX_OUTPUTS_PER_ROW)
        body, headers = self._call(_model_path(model.name) + "/infer", header + data,
                                   {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
                                   limit=limit)
        try:
            return _output(body, headers.get(HEADER_LENGTH), model.output_name, len(batch))
        except (KeyError, IndexError, TypeError, ValueError, OverflowError, RecursionError) as exc:
            detail = "nested too deeply" if isinstance(exc, RecursionError) else escape_terminal(str(exc)[:200])
            raise FakeGradientError(f"malformed inference answer: {detail}") from None


def answer_limit(rows: int, width: int) -> int:
    """The most bytes an infer answer of ``rows`` x ``width`` outputs may take: its values as JSON text, and a head."""
    return rows * width * JSON_BYTES_PER_VALUE + ANSWER_HEAD_BYTES


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect within the server's origin only. One to another origin is refused (:class:`Unreachable`:
    the model is not reachable where it was named), not followed without the token: a 307/308 would send the
    photos' tensors there too, and the device never meant to talk to that server."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # urllib's signature
        if _origin(newurl) != _origin(req.full_url):
            fp.close()
            where = escape_terminal(newurl)[:200]
            raise Unreachable(f"the server redirected {urllib.parse.urlsplit(req.full_url).path} to another "
                                    f"origin ({where}): refused, so that neither the token nor the photos go "
                                    "there; if that server is meant, pass its address as --server")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameOriginRedirects)


def _read_some(stream: Any, limit: int, seconds: float) -> bytes:
    """At most ``limit`` + 1 bytes of an answer's body, read as they arrive (never the whole of a larger one), for
    at most ``seconds`` in all (each read waits at most the socket's timeout)."""
    deadline = time.monotonic() + seconds
    read = getattr(stream, "read1", stream.read)
    chunks, total = [], 0
    while total <= limit:
        chunk = read(min(2**16, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the answer took more than {seconds:g} s")
    return b"".join(chunks)


def _read_answer(response: http.client.HTTPResponse, limit: int, path: str, seconds: float) -> bytes:
    """The body of ``response``, refused once it is known to exceed ``limit`` bytes (its Content-Length, or as it
    arrives)."""
    declared = getattr(response, "length", None)
    if declared is not None and declared > limit:
        raise FakeGradientError(f"the server's answer to {path} is {declared} bytes, over the {limit} expected: "
                                "refused")
    body = _read_some(response, limit, seconds)
    if len(body) > limit:
        raise FakeGradientError(f"the server's answer to {path} is over the {limit} bytes expected: refused")
    return body


class GrpcInferenceClient(InferenceClient):
    """The same client over gRPC (``grpc://host:port``): the calls go through :class:`.grpc_client.GrpcWire`,
    whose answers are the REST client's JSON values, checked alike. Needs grpcio."""

    def __init__(self, url: str, timeout: float = 60.0, token: str | None = None):
        from .grpc_client import GrpcWire

        super().__init__(url, timeout, token)
        self.wire = GrpcWire(url, timeout, token)

    def _metadata(self, name: str) -> Any:
        return self.wire.model_metadata(name)

    def _index(self) -> Any:
        return self.wire.repository_index()

    def _config(self, name: str) -> Any:
        return self.wire.model_config(name)

    def _model_names(self) -> list[str]:
        return [_text(entry["name"]) for entry in self._index()]

    def infer(self, model: ServerModel, batch: np.ndarray, width: int | None = None) -> np.ndarray:
        return self.wire.infer(model.name, model.input_name, model.output_name, batch)


def open_client(url: str, timeout: float = 60.0, token: str | None = None) -> InferenceClient:
    """The client for ``url``: ``grpc://host:port`` speaks gRPC, ``http(s)://`` REST."""
    if url.startswith("grpc://"):
        return GrpcInferenceClient(url, timeout, token)
    return InferenceClient(url, timeout, token)


def _model_path(name: str) -> str:
    return "/v2/models/" + urllib.parse.quote(name, safe="")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _output(body: bytes, header_length: str | None, name: str, rows: int) -> np.ndarray:
    """The output tensor ``name`` of an infer answer (JSON or binary data), checked to hold ``rows`` rows."""
    length = len(body) if header_length is None else int(header_length)
    if not 0 < length <= len(body):
        raise ValueError(f"{HEADER_LENGTH} {length} does not fit an answer of {len(body)} bytes")
    outputs = [o for o in json.loads(body[:length])["outputs"] if o["name"] == name]
    if len(outputs) != 1:
        raise ValueError(f"expected one output {name!r}, got {len(outputs)}")
    (output,) = outputs
    shape = [int(d) for d in output["shape"]]
    if len(shape) != 2 or shape[0] != rows:
        raise ValueError(f"expected {rows} rows of outputs, got shape {shape}")
    if "data" in output:
        values = np.asarray(output["data"], dtype=np.float32)
    elif output["datatype"] != "FP32" or len(body) - length != 4 * shape[0] * shape[1]:
        raise ValueError(f"binary output of {len(body) - length} bytes is not {shape} {output['datatype']}")
    else:
        values = np.frombuffer(body[length:], dtype="<f4")
    return values.reshape(shape).copy()


def check_spec(spec: Any) -> dict[str, Any]:
    """The server's preprocessing parameters, refused unless complete, sane and within bounds: resize and crop
    at most :data:`MAX_SIDE`, |mean| at most :data:`MAX_ABS_MEAN`, std within :data:`STD_RANGE`."""
    def positive(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    def three(v: Any, low: float) -> bool:
        return (isinstance(v, list) and len(v) == 3
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > low
                        for x in v))

    if not (isinstance(spec, dict) and positive(spec.get("resize")) and positive(spec.get("crop"))
            and spec["crop"] <= spec["resize"] and str(spec.get("interpolation", "bilinear")) in _RESAMPLE
            and three(spec.get("mean"), -math.inf) and three(spec.get("std"), 0)):
        raise FakeGradientError("the server's preprocessing parameters are invalid: "
                                f"{escape_terminal(str(spec)[:200])}")
    bounds = [(spec["resize"] <= MAX_SIDE, f"resize {spec['resize']} (at most {MAX_SIDE})"),
              (all(abs(m) <= MAX_ABS_MEAN for m in spec["mean"]), f"mean {spec['mean']} (|mean| at most {MAX_ABS_MEAN:g})"),
              (all(STD_RANGE[0] <= x <= STD_RANGE[1] for x in spec["std"]),
               f"std {spec['std']} (within {STD_RANGE[0]:g}..{STD_RANGE[1]:g})")]
    outside = [text for within, text in bounds if not within]
    if outside:
        raise FakeGradientError(f"the server's preprocessing parameters are out of bounds: {'; '.join(outside)}")
    return spec


def load_labels(path: str | Path) -> list[str]:
    """Class names kept on the device: a JSON list of strings, a text file of one name per line (as
    ``protect --labels`` reads them), or the protected model's folder or ``model.onnx`` (its metadata; needs
    the ``onnx`` package)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    if path.suffix != ".onnx":
        return read_labels(path)
    try:
        import onnx
    except ImportError:
        raise FakeGradientError(f"reading labels from {path} needs the onnx package; pass a JSON list "
                                "or a text file of class names instead") from None
    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        labels = json.loads(meta.get("fakegradient.categories", "null"))
    except (OSError, ValueError, RecursionError) as exc:
        raise FakeGradientError(f"cannot read labels from {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return checked_names(labels, path)


def classify_iter(url: str, key: Secret, images: Sequence[str | Path], *, model_name: str | None = None,
                  k: int = 5, batch_size: int = 16, token: str | None = None,
                  labels: Sequence[str] | None = None) -> Iterator[Classification | Failure]:
    """Classify image files through the server and decrypt with ``key`` (any scheme's secret: a :class:`Key`, a
    :class:`DeviceHead` for a server returning features, ...), yielding per image as each batch
    returns: a :class:`Classification`, or a :class:`Failure` (unreadable file, batch refused or answered
    wrongly) after which the rest goes on. A server that is unreachable, for another key or publishing bad
    parameters raises :class:`FakeGradientError`, at once or (unreachable) when it happens.

    ``token``: the server's bearer token. Class names: those the key carries; else ``labels`` (kept on the device
    beside an older key); else those the server publishes; else class numbers. Without ``model_name`` the model is
    the only one served, or the one publishing the key's fingerprint."""
    if labels is not None and len(labels) != key.n_real:
        raise FakeGradientError(f"{len(labels)} labels for a key of {key.n_real} classes")
    client = open_client(url, token=token)
    model = client.model(model_name, key.model_fingerprint)
    if model.parameters.get("fingerprint") is None or model.parameters.get("preprocess") is None:
        # Triton publishes no metadata parameters: they are in the model's config (export-triton writes them)
        fallback = client.config_parameters(model.name)
        model.parameters |= {k: v for k, v in fallback.items() if model.parameters.get(k) is None}
    fingerprint = model.parameters.get("fingerprint")
    if not isinstance(fingerprint, str):
        raise KeyMismatch(f"model {model.name!r} publishes no fakegradient fingerprint: is it protected?")
    if not (fingerprint.isascii() and fingerprint.isprintable() and len(fingerprint) <= MAX_FINGERPRINT_CHARS):
        raise KeyMismatch(f"model {model.name!r} publishes a malformed fingerprint")
    key.check_fingerprint(fingerprint)
    if model.parameters.get("preprocess") is None:
        raise FakeGradientError(f"model {model.name!r} publishes no preprocessing parameters")
    spec = check_spec(model.parameters["preprocess"])
    categories = list(labels) if labels is not None else model.parameters.get("categories")
    categories = categories if isinstance(categories, list) else None
    batch_size = min(batch_size, client.max_batch(model.name) or batch_size)
    yield from stream(images, lambda path: preprocess(path, spec),
                      lambda batch: client.infer(model, np.stack(batch), key.n_outputs),
                      key, k=k, batch_size=batch_size, categories=categories)


def classify(url: str, key: Secret, images: Sequence[str | Path], *, model_name: str | None = None,
             k: int = 5, batch_size: int = 16, token: str | None = None,
             labels: Sequence[str] | None = None) -> list[Classification]:
    """Classify image files through the server and decrypt with ``key``; any failure raises (the first one)."""
    results = []
    for result in classify_iter(url, key, images, model_name=model_name, k=k, batch_size=batch_size, token=token,
                                labels=labels):
        if isinstance(result, Failure):
            raise FakeGradientError(result.error)
        results.append(result)
    return results
