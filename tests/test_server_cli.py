"""``fakegradient serve`` on the command line: bad options and an unusable port are one-line errors, and
the options reach the running server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from test_server_support import write_model

from fakegradient.cli import main


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
def test_serve_on_port_0_prints_its_port_and_applies_the_timeouts(folder):
    server = subprocess.Popen([sys.executable, "-m", "fakegradient.cli", "serve", str(folder), "--port", "0",
                               "--header-timeout", "0.5", "--threads", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("serving tiny on http://127.0.0.1:"), line
        port = int(line.split(":")[2].split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=10) as answer:
            assert answer.status == 200
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.settimeout(10)
            start = time.monotonic()
            assert idle.recv(1) == b""  # closed by the server after --header-timeout
            assert time.monotonic() - start < 5
    finally:
        server.terminate()
        server.wait(timeout=30)
