"""Hostile or careless key files: one-line KeyFileError, bounded reads, a warning for loose permissions."""

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from fakegradient import Key, KeyFileError
from fakegradient.key import MAX_KEY_BYTES, _checksum

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions and device files")


@pytest.fixture
def key():
    return Key(permutation=np.random.default_rng(0).permutation(20), n_real=10, method="fake-gradient",
               scale=20.0, model_fingerprint="ab" * 32, head="fc")


def signed(payload: dict) -> bytes:
    """A key file whose checksum matches its (edited) content: only the field checks can refuse it."""
    payload = {k: v for k, v in payload.items() if k != "checksum"}
    return json.dumps(payload | {"checksum": _checksum(payload)}).encode()


def edited(key: Key, **fields) -> bytes:
    return signed(json.loads(key.to_bytes()) | fields)


def assert_refused(data: bytes, tmp_path, match: str = "") -> str:
    path = tmp_path / "key.json"
    path.write_bytes(data)
    with pytest.raises(KeyFileError, match=match) as info:
        Key.load(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def test_signed_edits_of_a_valid_key_still_load(key, tmp_path):
    path = tmp_path / "key.json"
    path.write_bytes(edited(key))
    assert np.array_equal(Key.load(path).permutation, key.permutation)


def deeply_nested(key: Key, depth: int) -> bytes:
    """A correctly signed key file whose ``head`` is ``depth`` nested lists (too deep to build as objects)."""
    payload = json.loads(key.to_bytes()) | {"head": "HEAD"}
    del payload["checksum"]
    nested = "[" * depth + "]" * depth
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":")).replace('"HEAD"', nested)
    checksum = hashlib.sha256(canonical.encode()).hexdigest()
    return json.dumps(payload | {"checksum": checksum}).replace('"HEAD"', nested).encode()


@pytest.mark.parametrize("depth", [200, 990, 5000, 200_000])
def test_deep_nesting_is_a_one_line_error(key, tmp_path, depth):
    assert_refused(deeply_nested(key, depth), tmp_path)


def test_huge_numbers_are_one_line_errors(key, tmp_path):
    permutation = json.loads(key.to_bytes())["permutation"]
    assert_refused(edited(key, permutation=[10**30, *permutation[1:]]), tmp_path, "permutation")
    assert_refused(edited(key, permutation=[-1, *permutation[1:]]), tmp_path, "permutation")
    digits = key.to_bytes().replace(b'"n_real": 10', b'"n_real": ' + b"9" * 5000)
    assert_refused(digits, tmp_path, "truncated or corrupted")  # beyond Python's int-parsing limit


@pytest.mark.parametrize("fields", [
    {"n_real": 0, "permutation": []}, {"n_real": -1}, {"n_real": 10.0}, {"n_real": True}, {"n_real": "10"},
    {"n_real": 10**30}, {"n_real": 1e400}, {"permutation": "0123"}, {"permutation": None},
    {"scale": float("inf")}, {"scale": float("nan")}, {"scale": "big"}, {"scale": 10**400}, {"scale": True},
    {"method": 3}, {"model_fingerprint": None}, {"head": ["fc"]}, {"version": True},
])
def test_mistyped_fields_are_refused(key, tmp_path, fields):
    assert_refused(edited(key, **fields), tmp_path)


def test_non_integer_permutation_entries_are_refused(key, tmp_path):
    permutation = json.loads(key.to_bytes())["permutation"]
    for bad in (float(permutation[0]), permutation[0] + 0.5, True, str(permutation[0]), [permutation[0]]):
        assert_refused(edited(key, permutation=[bad, *permutation[1:]]), tmp_path, "permutation")
    assert_refused(edited(key, permutation=permutation[:-1]), tmp_path, "permutation")
    payload = json.loads(key.to_bytes())
    del payload["method"]
    assert_refused(signed(payload), tmp_path, "method")


@posix_only
def test_non_regular_files_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    for path in (fifo, tmp_path, "/dev/null"):
        with pytest.raises(KeyFileError, match="not a regular file"):
            Key.load(path)


def test_oversized_key_file_is_refused_after_a_bounded_read(tmp_path, monkeypatch):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (MAX_KEY_BYTES + 1))
    with pytest.raises(KeyFileError, match="larger than"):
        Key.load(path)


@posix_only
def test_dev_zero_as_key_is_a_one_line_error():
    """`--key /dev/zero` used to read forever (then MemoryError); the child's memory is capped just in case."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "fakegradient.cli", "info", "/dev/zero"], capture_output=True,
                          text=True, timeout=60, preexec_fn=cap, env=env, check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.splitlines() == ["error: key file /dev/zero is not a regular file"]


@posix_only
@pytest.mark.parametrize("mode, warns", [(0o600, False), (0o400, False), (0o640, True), (0o604, True),
                                         (0o620, True), (0o666, True)])
def test_loose_key_permissions_warn(key, tmp_path, caplog, mode, warns):
    path = tmp_path / "key.json"
    key.save(path)
    path.chmod(mode)
    with caplog.at_level(logging.WARNING, logger="fakegradient"):
        Key.load(path)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if warns:
        assert len(messages) == 1 and f"mode {mode:04o}" in messages[0] and "chmod 600" in messages[0], messages
    else:
        assert messages == []


@posix_only
def test_loose_key_permissions_warn_on_the_command_line(key, tmp_path):
    path = tmp_path / "key.json"
    key.save(path)
    path.chmod(0o644)
    done = subprocess.run([sys.executable, "-m", "fakegradient.cli", "info", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n_real"] == 10
    (line,) = done.stderr.splitlines()
    assert "readable or writable by group or others (mode 0644)" in line and f"chmod 600 {path}" in line
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # a warning only: the file is left as it is


def test_seeded_keys_say_so_and_warn(key, tmp_path, caplog):
    import torch

    import fakegradient

    _, seeded = fakegradient.protect(torch.nn.Linear(4, 3), example_input=torch.randn(2, 4), seed=0)
    _, secure = fakegradient.protect(torch.nn.Linear(4, 3), example_input=torch.randn(2, 4))
    assert seeded.seeded and not secure.seeded
    seeded.save(tmp_path / "seeded.json")
    secure.save(tmp_path / "secure.json")
    assert json.loads((tmp_path / "seeded.json").read_text())["seeded"] is True
    assert "seeded" not in json.loads((tmp_path / "secure.json").read_text())  # the format of older files
    with caplog.at_level(logging.WARNING, logger="fakegradient"):
        assert Key.load(tmp_path / "seeded.json").seeded
        Key.load(tmp_path / "secure.json")
    (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "made with a seed" in message and "NOT secure" in message
    done = subprocess.run([sys.executable, "-m", "fakegradient.cli", "info", str(tmp_path / "seeded.json")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and json.loads(done.stdout)["seeded"] is True
    assert "NOT secure" in done.stderr
    assert_refused(edited(key, seeded="yes"), tmp_path, "seeded")
