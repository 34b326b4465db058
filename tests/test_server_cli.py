"""``fakegradient serve`` on the command line: bad options and an unusable port are one-line errors, and
the options reach the running server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from test_server_support import write_model

from fakegradient.cli import build_parser, main
from fakegradient.errors import InvalidArgument
from fakegradient.serving import settings
from fakegradient.serving.settings import Access, Batching, Limits, Observability, RuntimeOptions, from_flags


@pytest.fixture
def folder(tmp_path):
    write_model(tmp_path / "tiny")
    return tmp_path / "tiny"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("option, value", [
    ("--port", "99999"), ("--port", "-1"), ("--max-inflight", "0"), ("--max-connections", "-5"),
    ("--header-timeout", "nan"), ("--body-timeout", "0"), ("--keep-alive", "inf"), ("--max-body-mb", "inf"),
    ("--max-batch", "0"), ("--max-buffered-mb", "0"), ("--batch-rows", "0"), ("--batch-delay-ms", "-1"),
    ("--batch-delay-ms", "nan"), ("--max-buffered-mb", "32"),  # below --max-body-mb 64
])
def test_bad_values_are_one_line_errors_exit_2(folder, capsys, option, value):
    assert main(["serve", str(folder), option, value]) == 2
    assert option in one_line_error(capsys)


def test_a_port_in_use_is_a_one_line_error(folder, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(folder), "--port", str(port)]) == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in one_line_error(capsys)


@pytest.mark.slow
def test_serve_on_port_0_prints_its_port_and_applies_the_timeouts_and_no_metrics(folder):
    server = subprocess.Popen([sys.executable, "-m", "fakegradient.cli", "serve", str(folder), "--port", "0",
                               "--header-timeout", "0.5", "--threads", "1", "--no-metrics"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("serving tiny on http://127.0.0.1:"), line
        port = int(line.split(":")[2].split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=10) as answer:
            assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert missing.value.code == 404  # --no-metrics
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.settimeout(10)
            start = time.monotonic()
            assert idle.recv(1) == b""  # closed by the server after --header-timeout
            assert time.monotonic() - start < 5
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- the settings validate themselves; serve's flags and defaults come from their fields --------------------


@pytest.mark.parametrize("make, field", [
    (lambda: Limits(max_inflight=0), "Limits.max_inflight"), (lambda: Limits(header_timeout=float("nan")),
                                                              "Limits.header_timeout"),
    (lambda: Limits(max_batch=2.5), "Limits.max_batch"), (lambda: Limits(keep_alive=float("inf")), "Limits.keep_alive"),
    (lambda: Limits(max_body_bytes=2**20, max_buffered_bytes=2**19), "Limits.max_buffered_bytes"),
    (lambda: Batching(max_rows=0), "Batching.max_rows"), (lambda: Batching(max_delay=-1e-3), "Batching.max_delay"),
    (lambda: Batching(enabled="yes"), "Batching.enabled"), (lambda: RuntimeOptions(threads=-1), "RuntimeOptions.threads"),
    (lambda: RuntimeOptions(device="tpu"), "RuntimeOptions.device"),
    (lambda: Access(public_metadata="all"), "Access.public_metadata"),
    (lambda: Observability(metrics="no"), "Observability.metrics"),
])
def test_settings_refuse_bad_values_naming_the_field(make, field):
    with pytest.raises(InvalidArgument, match=rf"^{field} must be "):
        make()


def test_serve_flags_and_defaults_are_the_settings_fields():
    """Every field of Limits, Batching, RuntimeOptions and Observability has a serve flag whose default, parsed
    back, is the field's default: a default written once."""
    args = build_parser().parse_args(["serve", "folder"])
    for cls in (Limits, Batching, RuntimeOptions, Observability):
        assert from_flags(cls, args) == cls()  # each field read from its flag (an AttributeError if none)
    args = build_parser().parse_args(["serve", "folder", "--max-body-mb", "1.5", "--batch-delay-ms", "4",
                                      "--max-head-kb", "8", "--dynamic-batching", "--threads", "3", "--cpu-arena"])
    assert from_flags(Limits, args).max_body_bytes == 3 * 2**19 and from_flags(Limits, args).max_head_bytes == 8192
    assert from_flags(Batching, args) == Batching(enabled=True, max_delay=0.004)
    assert from_flags(RuntimeOptions, args) == RuntimeOptions(threads=3, cpu_arena=True)
    assert from_flags(Observability, args) == Observability(metrics=True, access_log=False)
    args = build_parser().parse_args(["serve", "folder", "--no-metrics", "--access-log"])
    assert from_flags(Observability, args) == Observability(metrics=False, access_log=True)


def test_flag_errors_are_in_the_flags_units(folder, capsys):
    assert main(["serve", str(folder), "--max-buffered-mb", "32"]) == 2
    assert one_line_error(capsys) == "error: --max-buffered-mb must be >= --max-body-mb, got 32\n"
    assert main(["serve", str(folder), "--batch-delay-ms", "-2"]) == 2
    assert one_line_error(capsys) == "error: --batch-delay-ms must be >= 0, got -2\n"


@pytest.mark.parametrize(("threads", "cores", "runs", "resolved"), [(0, 2, 2, 1), (0, 16, 2, 8), (0, 2, 4, 1),
                                                                   (0, 1, 1, 1), (3, 2, 2, 3)])
def test_threads_0_divides_the_usable_cores_among_the_runs(monkeypatch, threads, cores, runs, resolved):
    monkeypatch.setattr(settings, "usable_cores", lambda: cores)
    assert RuntimeOptions(threads=threads).for_runs(runs).threads == resolved
