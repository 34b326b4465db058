"""Unit tests of the v2 protocol's pure functions: request parsing, validation, response building."""

import json
import struct

import numpy as np
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fakegradient.serving.errors import InvalidInput, ModelNotFound, PayloadTooLarge, ProtocolError
from fakegradient.serving.protocol import (
    HEADER_LENGTH,
    build_infer_response,
    check_outputs,
    parse_header_length,
    parse_infer_request,
)

EXPECTED = {"name": "input", "shape": [-1, 3, 2, 2]}
MAX_BATCH = 4
SETTINGS = settings(deadline=None, database=None, max_examples=60,
                    suppress_health_check=[HealthCheck.too_slow])


def tensor(x=None, **overrides) -> dict:
    """One JSON input tensor for ``x`` (default: a (1, 3, 2, 2) ramp), with fields overridden."""
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2) / 7 if x is None else x
    entry = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
    entry.update(overrides)
    return entry


def body(request: dict) -> bytes:
    return json.dumps(request).encode()


def binary_body(x: np.ndarray, extra: bytes = b"", declared: int | str | None = None,
                **request) -> tuple[bytes, int]:
    """(body, header length) in the binary tensor data extension, as tritonclient sends it."""
    size = x.nbytes if declared is None else declared
    head = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": size}}], **request}
    header = json.dumps(head).encode()
    return header + x.astype("<f4").tobytes() + extra, len(header)


def parse(data: bytes, header_length: int | None = None):
    return parse_infer_request(data, header_length, EXPECTED, MAX_BATCH)


def refused(data: bytes, header_length: int | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(data, header_length)
    return info.value


def batch_shapes(max_batch: int):
    return st.tuples(st.integers(1, max_batch), st.just(3), st.just(2), st.just(2))


finite_batches = hnp.arrays(np.float32, batch_shapes(MAX_BATCH),
                            elements=st.floats(width=32, allow_nan=False, allow_infinity=False))
logits_arrays = hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=5),
                           elements=st.floats(width=32))


# --- the error classes ----------------------------------------------------------------------------


def test_error_classes_carry_their_status():
    assert (InvalidInput.status, ModelNotFound.status, PayloadTooLarge.status) == (400, 404, 413)
    for cls in (InvalidInput, ModelNotFound, PayloadTooLarge):
        assert issubclass(cls, ProtocolError) and str(cls("why")) == "why" and cls("why").status == cls.status


# --- requests that parse --------------------------------------------------------------------------


@SETTINGS
@given(finite_batches)
def test_json_request_round_trips(x):
    parsed = parse(body({"inputs": [tensor(x)]}))
    assert list(parsed.inputs) == ["input"]
    got = parsed.inputs["input"]
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, x)  # JSON floats survive float32 -> float -> float32 exactly
    assert parsed.binary_outputs is False and parsed.request_id is None


@SETTINGS
@given(finite_batches)
def test_binary_request_round_trips(x):
    data, header_length = binary_body(x)
    got = parse(data, header_length).inputs["input"]
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, x)


def test_nested_data_and_integers_are_accepted():
    x = np.arange(12).reshape(1, 3, 2, 2)
    parsed = parse(body({"inputs": [tensor(x, data=x.tolist())]}))
    np.testing.assert_array_equal(parsed.inputs["input"], x.astype(np.float32))


@pytest.mark.parametrize("binary", [True, False])
def test_requests_made_by_tritonclient_parse(binary):
    x = np.random.default_rng(0).random((2, 3, 2, 2), dtype=np.float32)
    tensor_in = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor_in.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
    data, header_length = httpclient.InferenceServerClient.generate_request_body([tensor_in], outputs,
                                                                                 request_id="r-7")
    parsed = parse(data, header_length)
    np.testing.assert_array_equal(parsed.inputs["input"], x)
    assert parsed.binary_outputs is binary and parsed.request_id == "r-7"


def test_request_id_is_echoed():
    assert parse(body({"id": "abc-1", "inputs": [tensor()]})).request_id == "abc-1"
    assert parse(body({"inputs": [tensor()]})).request_id is None


@pytest.mark.parametrize("request_fields, binary", [
    ({}, False),
    ({"parameters": {"binary_data_output": True}}, True),
    ({"parameters": {"binary_data_output": False}}, False),
    ({"outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}, True),
    ({"outputs": [{"name": "logits", "parameters": {"binary_data": False}}]}, False),
    ({"outputs": [{"name": "logits"}]}, False),
    ({"outputs": []}, False),
])
def test_binary_outputs_flag(request_fields, binary):
    assert parse(body({"inputs": [tensor()], **request_fields})).binary_outputs is binary


# --- requests refused: status and message ---------------------------------------------------------


@pytest.mark.parametrize("data, status, message", [
    (b'{"inputs": [', 400, "malformed JSON"),
    (b"\xff\xfe not utf-8", 400, "malformed JSON"),
    (b"[" * 100_000, 400, "malformed JSON"),  # too deep for the decoder
    (b'{"inputs": [{"data": [' + b"9" * 5000 + b"]}]}", 400, "malformed JSON"),  # over Python's int digits
    (b"[]", 400, "non-empty 'inputs' list"),
    (b'{"outputs": []}', 400, "non-empty 'inputs' list"),
    (b'{"inputs": []}', 400, "non-empty 'inputs' list"),
    (b'{"inputs": {"name": "input"}}', 400, "non-empty 'inputs' list"),
    (body({"inputs": [tensor(), tensor()]}), 400, "exactly one input, got 2"),
    (body({"inputs": ["input"]}), 400, "each input must be an object"),
    (body({"inputs": [tensor(name="x")]}), 400, "unknown input 'x'; the model's input is 'input'"),
    (body({"inputs": [tensor(datatype="INT64")]}), 400, "datatype 'INT64' not supported; send FP32"),
    (body({"inputs": [tensor(datatype=["FP32"])]}), 400, "datatype ['FP32'] not supported"),
    (body({"inputs": [tensor(shape="1,3,2,2")]}), 400, "'shape' must be a list of non-negative integers"),
    (body({"inputs": [tensor(shape=[1, 3, 2, -2])]}), 400, "'shape' must be a list of non-negative integers"),
    (body({"inputs": [tensor(shape=[1, 3, 2.0, 2])]}), 400, "'shape' must be a list of non-negative"),
    (body({"inputs": [tensor(shape=[True, 3, 2, 2])]}), 400, "'shape' must be a list of non-negative"),
    (body({"inputs": [tensor(shape=[1, 3, 4])]}), 400, "input shape [1, 3, 4] does not match the model's"),
    (body({"inputs": [tensor(shape=[1, 3, 2, 3])]}), 400, "input shape [1, 3, 2, 3] does not match"),
    (body({"inputs": [tensor(shape=[0, 3, 2, 2], data=[])]}), 400, "input shape [0, 3, 2, 2] does not match"),
    (body({"inputs": [tensor(np.zeros((MAX_BATCH + 1, 3, 2, 2), np.float32))]}), 413,
     f"batch of {MAX_BATCH + 1} exceeds the limit of {MAX_BATCH}"),
    (body({"inputs": [tensor(data=None)]}), 400, "neither 'data' nor binary data"),
    (body({"inputs": [{k: v for k, v in tensor().items() if k != "data"}]}), 400, "neither 'data' nor"),
    (body({"inputs": [tensor(data=["a"] * 12)]}), 400, "'data' must hold numbers only"),
    (body({"inputs": [tensor(data=["1.5"] * 12)]}), 400, "'data' must hold numbers only"),  # not parsed
    (body({"inputs": [tensor(data=[True] * 12)]}), 400, "'data' must hold numbers only"),
    (body({"inputs": [tensor(data=[None] * 12)]}), 400, "'data' must hold numbers only"),
    (body({"inputs": [tensor(data=[[1.0] * 5, [1.0] * 7])]}), 400, "'data' must hold numbers only"),  # ragged
    (body({"inputs": [tensor(data={"a": 1})]}), 400, "'data' must hold numbers only"),
    (body({"inputs": [tensor(data=[0.5] * 11)]}), 400, "'data' holds 11 values, shape [1, 3, 2, 2] needs 12"),
    (body({"inputs": [tensor(parameters=5)]}), 400, "the input's 'parameters' must be an object"),
    (body({"inputs": [tensor()], "parameters": "binary"}), 400, "the request's 'parameters' must be an"),
    (body({"inputs": [tensor()], "outputs": 5}), 400, "'outputs' must be a list"),
    (body({"inputs": [tensor()], "outputs": ["logits"]}), 400, "each output must be an object"),
    (body({"inputs": [tensor()], "outputs": [{"name": "logits", "parameters": [1]}]}), 400,
     "an output's 'parameters' must be"),
    # the 500s, each a 400 now
    (body({"inputs": [tensor(datatype={"FP32": 1})]}), 400, "datatype {'FP32': 1} not supported"),
    (body({"inputs": [tensor(parameters={"binary_data_size": {"a": 1}})]}), 400, "the input's 'parameters'"),
    (body({"inputs": [tensor()], "parameters": {"binary_data_output": [True]}}), 400, "the request's 'param"),
    (body({"inputs": [tensor()], "parameters": {"binary_data_output": "yes"}}), 400,
     "parameter 'binary_data_output' must be true or false, got 'yes'"),
    (body({"inputs": [tensor()], "outputs": [{"name": "logits", "parameters": {"binary_data": 1}}]}), 400,
     "parameter 'binary_data' must be true or false"),
    (body({"inputs": [tensor()], "outputs": {"name": "logits"}}), 400, "'outputs' must be a list"),
    (body({"inputs": [tensor()], "outputs": [{"parameters": {}}]}), 400, "each output must be an object with a"),
    (body({"inputs": [tensor()], "id": {"a": [1]}}), 400, "'id' must be a string"),
    (body({"inputs": [tensor()], "id": 7}), 400, "'id' must be a string"),
    (b'{"inputs": [{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}]}", 400, "malformed JSON"),  # RecursionError
    (body({"inputs": [tensor(data=[10**400] + [0.5] * 11)]}), 400, "'data' must hold numbers only"),
    (body({"inputs": [tensor(name="x" * 10**6)]}), 400, "unknown input 'xxxxxxxxxxxx...xxxxxxxxxxxxx'; the"),
])
def test_bad_json_requests(data, status, message):
    error = refused(data)
    assert error.status == status and message in str(error), (error.status, str(error))
    assert isinstance(error, PayloadTooLarge if status == 413 else InvalidInput)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e39])  # 1e39 overflows FP32
def test_non_finite_json_data_is_refused(value):
    data = [0.5] * 11 + [value]
    error = refused(body({"inputs": [tensor(data=data)]}))  # json.dumps writes NaN / Infinity / 1e+39
    assert error.status == 400 and "NaN or infinite" in str(error)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_json_literals_are_refused(literal):
    data = b'{"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [' + \
        b"0.5, " * 11 + literal + b"]}]}"
    error = refused(data)
    assert error.status == 400 and "NaN or infinite" in str(error)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_binary_data_is_refused(value):
    x = np.zeros((1, 3, 2, 2), np.float32)
    x[0, 1, 1, 0] = value
    error = refused(*binary_body(x))
    assert error.status == 400 and "NaN or infinite" in str(error)


@pytest.mark.parametrize("header_length", [0, -1, 10_000])
def test_header_length_that_does_not_fit_the_body(header_length):
    data, _ = binary_body(np.zeros((1, 3, 2, 2), np.float32))
    error = refused(data, header_length)
    assert error.status == 400
    assert f"{HEADER_LENGTH} {header_length} does not fit a body of {len(data)} bytes" == str(error)


def test_header_length_cutting_the_json_short():
    data, header_length = binary_body(np.zeros((1, 3, 2, 2), np.float32))
    error = refused(data, header_length - 1)
    assert error.status == 400 and "malformed JSON" in str(error)


def test_header_length_parsing():
    assert parse_header_length(None) is None
    assert parse_header_length("176") == 176 and parse_header_length("0") == 0
    for bad in ["", "abc", "-5", "1.5", " 12", "1_2", "\u00b2"]:
        with pytest.raises(InvalidInput, match=f"{HEADER_LENGTH} must be a non-negative integer"):
            parse_header_length(bad)


def test_a_giant_header_length_is_refused_in_a_short_message():
    assert parse_header_length("9" * 20) == 10**20 - 1
    for digits in (21, 4301, 100_000):  # int() itself refuses over 4300 digits (a ValueError: a 500)
        with pytest.raises(InvalidInput) as info:
            parse_header_length("9" * digits)
        assert str(info.value) == f"{HEADER_LENGTH} of {digits} digits is no length (at most 20)"
    with pytest.raises(InvalidInput) as info:
        parse_header_length("x" * 5000)
    assert len(str(info.value)) < 100  # not echoed whole


def test_data_and_binary_data_in_one_input_are_refused():
    x = np.zeros((1, 3, 2, 2), np.float32)
    data, header_length = binary_body(x)
    both = data.replace(b'"parameters"', b'"data": [' + b", ".join([b"0"] * 12) + b'], "parameters"', 1)
    error = refused(both, header_length + len(both) - len(data))
    assert error.status == 400 and "both 'data' and 'binary_data_size'" in str(error)


def test_the_outputs_named_are_kept_and_checked():
    assert parse(body({"inputs": [tensor()], "outputs": [{"name": "logits"}, {"name": "x"}]})).outputs == (
        "logits", "x")
    assert parse(body({"inputs": [tensor()]})).outputs == ()
    check_outputs(("logits",), ["logits"])
    with pytest.raises(InvalidInput, match=r"unknown output 'x'; the model's outputs: \['logits'\]"):
        check_outputs(("logits", "x"), ["logits"])


@pytest.mark.parametrize("extra, declared", [
    (b"\x00", None),  # a trailing byte after the tensor
    (b"", 44),  # declared size too small for the shape
    (b"", 52),  # declared size too large for the shape
    (b"", "48"),  # declared size not a number
])
def test_binary_size_mismatch(extra, declared):
    x = np.zeros((1, 3, 2, 2), np.float32)
    data, header_length = binary_body(x, extra=extra, declared=declared)
    error = refused(data, header_length)
    assert error.status == 400 and "does not hold 12 FP32 values" in str(error)


def test_binary_data_truncated():
    data, header_length = binary_body(np.zeros((1, 3, 2, 2), np.float32))
    error = refused(data[:-4], header_length)
    assert error.status == 400 and "binary data of 44 bytes does not hold 12 FP32 values" == str(error)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


@st.composite
def mutated_requests(draw) -> tuple[bytes, int | None]:
    """A valid request (JSON or binary, batch up to one over the limit), some fields replaced by any JSON."""
    x = draw(hnp.arrays(np.float32, batch_shapes(MAX_BATCH + 1), elements=st.floats(width=32)))
    entry, tail = tensor(x), b""
    if binary := draw(st.booleans()):
        del entry["data"]
        entry["parameters"], tail = {"binary_data_size": x.nbytes}, x.tobytes()
    document = {"inputs": [entry], "id": "r", "parameters": {"binary_data_output": False},
                "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
    for key in draw(st.sets(st.sampled_from(sorted(entry)))):
        entry[key] = draw(json_values)
    for key in draw(st.sets(st.sampled_from(sorted(document)))):
        outputs_like = st.lists(st.fixed_dictionaries({"parameters": json_values}), max_size=2)
        document[key] = draw(json_values | outputs_like)
    head = json.dumps(document).encode()
    return (head + tail, len(head)) if binary else (head, None)


@settings(deadline=None, database=None, max_examples=300)
@given(mutated_requests() | st.tuples(json_values.map(lambda v: json.dumps(v).encode()), st.none()),
       st.none() | st.integers(-2, 300))
def test_any_request_parses_or_gives_a_protocol_error(request_and_length, other_length):
    """Never a crash (a 500): whatever the body, the parser returns a valid request or refuses (400/413)."""
    data, header_length = request_and_length
    if other_length is not None:  # sometimes a wrong header length
        header_length = other_length
    try:
        parsed = parse(data, header_length)
    except ProtocolError as error:
        assert error.status in (400, 413) and str(error)
    else:
        x = parsed.inputs["input"]
        assert x.dtype == np.float32 and x.shape[1:] == (3, 2, 2) and 1 <= x.shape[0] <= MAX_BATCH
        assert np.isfinite(x).all() and isinstance(parsed.binary_outputs, bool)


# --- responses ------------------------------------------------------------------------------------


@SETTINGS
@given(logits_arrays, st.none() | st.text(max_size=8))
def test_json_response_round_trips(logits, request_id):
    payload, headers = build_infer_response("mnv2", {"logits": logits}, False, request_id)
    assert headers == {}
    answer = json.loads(payload)
    assert answer["model_name"] == "mnv2" and answer["model_version"] == "1"
    assert answer.get("id") == request_id and ("id" in answer) == (request_id is not None)
    (out,) = answer["outputs"]
    assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == list(logits.shape)
    np.testing.assert_array_equal(np.asarray(out["data"], np.float32).reshape(logits.shape), logits)


@SETTINGS
@given(logits_arrays)
def test_binary_response_round_trips(logits):
    payload, headers = build_infer_response("mnv2", {"logits": logits}, True, "id-9")
    length = int(headers[HEADER_LENGTH])
    head, blob = json.loads(payload[:length]), payload[length:]
    (out,) = head["outputs"]
    assert head["id"] == "id-9" and "data" not in out and out["shape"] == list(logits.shape)
    assert out["parameters"]["binary_data_size"] == len(blob) == logits.size * 4
    np.testing.assert_array_equal(np.frombuffer(blob, "<f4").reshape(logits.shape), logits)


def test_binary_response_is_little_endian_float32_even_from_float64_big_endian():
    logits = np.array([[1.5, -2.0]], dtype=">f8")
    payload, headers = build_infer_response("m", {"logits": logits}, True, None)
    assert payload[int(headers[HEADER_LENGTH]):] == struct.pack("<2f", 1.5, -2.0)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_decodes_our_response(binary):
    logits = np.random.default_rng(2).standard_normal((3, 5)).astype(np.float32)
    payload, headers = build_infer_response("mnv2", {"logits": logits}, binary, "req")
    length = int(headers[HEADER_LENGTH]) if binary else None
    result = httpclient.InferResult.from_response_body(payload, header_length=length)
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    assert result.get_response()["id"] == "req"
