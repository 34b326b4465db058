"""Token files (``serve --token-file``, ``classify --token-file``): only a regular file is read (a FIFO never blocks),
and one that group or others may read is warned about, as key files are."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from fakegradient import FakeGradientError
from fakegradient.serving.auth import read_token

TOKEN = "0123456789abcdef0123456789abcdef"


def attempt(function, *args) -> BaseException | str | None:
    """``function(*args)`` in a thread: its result or exception, or None if it is still blocked after 30 s."""
    outcome: list[BaseException | str] = []

    def run() -> None:
        try:
            outcome.append(function(*args))
        except BaseException as exc:  # noqa: BLE001 - returned for the assertion
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    return outcome[0] if outcome else None


def test_a_fifo_as_the_token_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    outcome = attempt(read_token, fifo)
    if outcome is None:  # blocked in open(): release it so that the test ends
        with open(fifo, "wb") as writer:
            writer.write(TOKEN.encode())
        pytest.fail("read_token blocked on a FIFO")
    assert isinstance(outcome, FakeGradientError) and str(outcome) == f"token file {fifo} is not a regular file"


def test_a_folder_as_the_token_file_is_one_line(tmp_path):
    with pytest.raises(FakeGradientError, match=f"^token file {tmp_path} is not a regular file$"):
        read_token(tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
@pytest.mark.parametrize("mode, warned", [(0o600, False), (0o400, False), (0o644, True), (0o640, True), (0o606, True)])
def test_a_token_file_others_may_read_is_warned_about(tmp_path, caplog, mode, warned):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    with caplog.at_level(logging.WARNING):
        assert read_token(path) == TOKEN
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warned:
        expected = (f"token file {path} is readable or writable by group or others (mode {mode:04o}): "
                    f"whoever reads it can call the server as the device; run chmod 600 {path}")
        assert warnings == [expected]
    else:
        assert warnings == []
