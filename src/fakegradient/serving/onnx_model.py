"""A served model: an ONNX file run by ONNX Runtime, with the public metadata the export stored
(:mod:`fakegradient.bundle`).

The digest of the whole model (:mod:`.integrity`, metadata included) is recomputed from the bytes loaded and
checked, so that a corrupted or edited ``model.onnx`` is refused instead of served. The server cannot check the
fingerprint itself: it is keyed with a secret only the device holds.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import schemes
from ..bundle import read_props
from ..defaults import ORT_PROVIDERS
from ..errors import FakeGradientError, InvalidArgument, ModelFileError
from ..integrity import check_digest
from .settings import RuntimeOptions

TRIM_AFTER_BYTES = 8 * 2**20  # after a run on an input this large, freed memory goes back to the OS
MAX_ARCHIVE_MEMBERS = 256  # members of a zip file looked into for a secret
KEY_SCAN_MAX_BYTES = 16 * 2**20  # of each file (decompressed), looked at for a secret's declared format


@dataclass
class ServedModel:
    name: str
    path: Path
    session: Any
    input_name: str
    input_shape: list[int]  # -1 for the batch
    output_name: str
    output_shape: list[int]
    metadata: dict[str, str] = field(default_factory=dict)  # fakegradient.*: covered by the digest

    def infer(self, batch: np.ndarray) -> np.ndarray:
        logits = self.session.run([self.output_name], {self.input_name: batch})[0]
        if batch.nbytes >= TRIM_AFTER_BYTES:
            release_freed_memory()
        return logits

    def parameters(self) -> dict[str, Any]:
        """Public extras for the client: fingerprint, preprocessing, class names (never a key)."""
        return read_props(self.metadata, str(self.path))


def _providers(device: str) -> list[str]:
    """The providers for ``device``; a clear error when this ONNX Runtime cannot run on it."""
    import onnxruntime as ort

    if device not in ORT_PROVIDERS:
        raise InvalidArgument(f"--device must be one of {', '.join(ORT_PROVIDERS)}, got {device!r}")
    wanted = ORT_PROVIDERS[device][0]
    if wanted not in ort.get_available_providers():
        raise FakeGradientError(f"--device {device}: this ONNX Runtime ({ort.__version__}) has no {wanted} "
                                f"(it has {', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
    return list(ORT_PROVIDERS[device])


def load_model_dir(model_dir: Path, name: str | None = None,
                   runtime: RuntimeOptions = RuntimeOptions()) -> ServedModel:
    """Open ``model_dir/model.onnx``, check the whole model (metadata included) against its digest, and refuse a
    folder that holds a device's secret (any registered kind, compressed or behind a symlink)."""
    import onnx
    import onnxruntime as ort
    from google.protobuf.message import DecodeError

    model_dir = Path(model_dir)
    path = model_dir / "model.onnx"
    if not path.is_file():
        raise FakeGradientError(f"no model.onnx in {model_dir} (make one with `fakegradient protect`)")
    refuse_key_files(model_dir)
    data = path.read_bytes()
    try:
        graph = onnx.load_from_string(data)
    except (DecodeError, ValueError) as exc:  # a corrupted file
        raise FakeGradientError(f"cannot load {path}: not a valid ONNX file ({exc})") from None
    meta = {p.key: p.value for p in graph.metadata_props}
    try:
        if "fingerprint" not in read_props(meta, str(path)):
            raise FakeGradientError(f"{path} is not a fakegradient-protected model (no fingerprint in its "
                                    "metadata); make it with `fakegradient protect`")
    except ModelFileError as exc:
        raise FakeGradientError(str(exc)) from None
    check_digest(graph, path)  # the whole model, metadata included: a corrupted backbone is refused too
    providers = _providers(runtime.device)
    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.threads
    options.enable_cpu_mem_arena = runtime.cpu_arena
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer)
    try:  # the bytes checked above are the bytes run (a file with external data is opened by path)
        session = ort.InferenceSession(str(path) if external else data, options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types
        raise FakeGradientError(f"cannot load {path}: {exc}") from None
    if session.get_providers()[0] != providers[0]:  # ORT falls back to the CPU when CUDA cannot start
        raise FakeGradientError(f"cannot load {path} on --device {runtime.device}: ONNX Runtime fell back to "
                                f"{session.get_providers()[0]} (are the CUDA and cuDNN libraries installed?)")
    if len(session.get_inputs()) != 1 or len(session.get_outputs()) != 1:
        raise FakeGradientError(f"{path}: the model must have one input and one output")
    (inp,), (out,) = session.get_inputs(), session.get_outputs()

    def dims(shape) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in shape]

    return ServedModel(name or model_dir.resolve().name, path, session, inp.name, dims(inp.shape),
                       out.name, dims(out.shape), meta)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None (other C libraries return freed memory by themselves, or cannot)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Return the memory freed by a large run to the OS: glibc keeps freed heap memory for reuse, so that
    without this the server's resident size would stay at its peak (the GIL is released meanwhile)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def refuse_key_files(folder: Path) -> None:
    """Raise if any file under ``folder`` (recursively, symlinked folders followed once) is a device's secret of
    a registered kind, also when gzip-, bz2-, xz- or zip-compressed (each one's first :data:`KEY_SCAN_MAX_BYTES`
    are looked at)."""
    seen: set[tuple[int, int]] = set()
    for root, folders, files in os.walk(folder, followlinks=True):
        identity = os.stat(root)
        if (identity.st_dev, identity.st_ino) in seen:  # a symlink loop, or a folder reached twice
            folders.clear()
            continue
        seen.add((identity.st_dev, identity.st_ino))
        for file in files:
            candidate = Path(root, file)
            try:
                kind = next(filter(None, map(schemes.sniff, _content_prefixes(candidate))), None)
            except OSError as exc:  # unreadable: it might be a secret
                raise FakeGradientError(f"cannot check {candidate} for a key: {exc.strerror or exc}") from None
            if kind is not None:
                raise FakeGradientError(f"{candidate} is a {kind.FORMAT.removeprefix('fakegradient-')} file: a "
                                        "device's secret must never reach the server")


def _content_prefixes(path: Path) -> list[bytes]:
    """The first bytes of a regular file's content, decompressed when it is gzip, bz2 or xz, or of each member of
    a zip file (none for anything that is not a regular file: a FIFO is never opened for reading)."""
    import bz2
    import gzip
    import lzma
    import zipfile

    from ..secret_files import open_regular

    with open_regular(path) as handle:
        if handle is None:
            return []
        head = handle.read(KEY_SCAN_MAX_BYTES)
        opener = {b"\x1f\x8b": gzip.open, b"BZ": bz2.open, b"\xfd7": lzma.open}.get(head[:2])
        if head[:4] == b"PK\x03\x04":
            handle.seek(0)
            try:
                with zipfile.ZipFile(handle) as archive:
                    return [_bounded(archive.open(info)) for info in archive.infolist()[:MAX_ARCHIVE_MEMBERS]]
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError):
                return [head]
        if opener is None:
            return [head]
        handle.seek(0)
        try:
            return [head, _bounded(opener(handle))]
        except (OSError, EOFError, lzma.LZMAError):
            return [head]


def _bounded(stream: Any) -> bytes:
    """The first :data:`KEY_SCAN_MAX_BYTES` of a decompressed stream."""
    with stream:
        return stream.read(KEY_SCAN_MAX_BYTES)
