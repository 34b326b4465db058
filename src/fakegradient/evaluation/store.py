"""Finished shards on disk, so that an interrupted evaluation resumes where it stopped."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Self

import numpy as np

from ..atomic import write_bytes_atomic, write_with
from ..errors import FakeGradientError
from .plan import Shard, ShardResult

try:
    import fcntl
except ImportError:  # Windows: runs into one folder are not locked
    fcntl = None

RESUMABLE_CHANGES = ("device", "timing_repeats", "adaptive")  # settings a resumed run may change
_HELD: dict[str, list[int]] = {}  # run folder (real path) → [descriptor holding its lock, stores using it]


class ShardStore:
    """Finished shards as files (``<id>.json``: the shard and its records and values, ``<id>.npy``:
    heatmap perturbations), written atomically as they finish, and ``run.json``: the run's settings
    and evaluation seeds, so that a resumed run uses the same ones. ``resume=False`` starts afresh (the CLI
    first asks for ``--fresh`` when :func:`unfinished_run`).

    The run folder (``folder``'s parent, the CLI's ``--out``) is locked first, before anything in it changes: a
    second process that runs into it fails at once (:func:`lock_run_folder`); the lock is held until
    :meth:`close` (or the end of a ``with`` block), else until the process exits."""

    def __init__(self, folder: Path | None, resume: bool = False):
        self.folder = folder
        if folder is not None:
            try:
                folder.parent.mkdir(parents=True, exist_ok=True)
                lock_run_folder(folder.parent)
                if folder.exists() and not resume:
                    shutil.rmtree(folder)
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FakeGradientError(f"cannot use {folder} for shard results: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Release the run folder's lock (the shards stay)."""
        if self.folder is not None:
            release_run_folder(self.folder.parent)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def begin(self, settings: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
        """A fresh run records its settings; a resumed run must have the same ones. A setting a run recorded
        before the setting existed is taken to be at its value in ``defaults`` (a new setting's default keeps
        the old behaviour), so an unfinished run survives an upgrade that adds one."""
        if self.folder is None:
            return
        kept = {k: v for k, v in json.loads(json.dumps(settings)).items() if k not in RESUMABLE_CHANGES}
        run = self._run()
        if run is None:
            self._write_run({"settings": kept, "seeds": {}})
            return
        absent = {k: v for k, v in json.loads(json.dumps(defaults or {})).items() if k in kept}
        stored = {**absent, **run["settings"]}
        if stored != kept:
            changed = sorted(k for k in kept.keys() | stored.keys() if kept.get(k) != stored.get(k))
            raise FakeGradientError(f"--resume: the unfinished run in {self.folder.parent} used other "
                                    f"settings ({', '.join(changed)}); rerun with the same ones, or without "
                                    "--resume")

    def seed(self, model: str, draw: Callable[[], int]) -> int:
        """The evaluation seed of ``model`` in this run: the stored one when resuming, else ``draw()``."""
        run = self._run()
        if run is None:
            return draw()
        if model not in run["seeds"]:
            run["seeds"][model] = draw()
            self._write_run(run)
        return int(run["seeds"][model])

    def _run(self) -> dict[str, Any] | None:
        if self.folder is None or not (self.folder / "run.json").is_file():
            return None
        try:
            return json.loads((self.folder / "run.json").read_text())
        except (json.JSONDecodeError, OSError) as exc:
            raise FakeGradientError(f"--resume: {self.folder / 'run.json'} is damaged ({exc}); "
                                    "rerun without --resume") from None

    def _write_run(self, run: dict[str, Any]) -> None:
        write_bytes_atomic(self.folder / "run.json", json.dumps(run).encode())

    def get(self, shard: Shard) -> ShardResult | None:
        """The stored result, or None when absent, damaged, or made for other budgets."""
        if self.folder is None or not (self.folder / f"{shard.id}.json").is_file():
            return None
        try:
            payload = json.loads((self.folder / f"{shard.id}.json").read_text())
            if Shard.from_json(json.dumps(payload["shard"])) != shard:
                return None
            result = ShardResult(payload["records"], None, payload["values"])
            pert_file = self.folder / f"{shard.id}.npy"
            if pert_file.is_file():
                result.perturbation = np.load(pert_file)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, OSError):
            return None  # a damaged shard file is recomputed
        return result

    def put(self, shard: Shard, result: ShardResult) -> None:
        if self.folder is None:
            return
        if result.perturbation is not None:  # before the json: a shard counts as done once its json exists
            write_with(self.folder / f"{shard.id}.npy", lambda tmp: _save_npy(tmp, result.perturbation))
        payload = {"shard": asdict(shard), "records": result.records, "values": result.values}
        write_bytes_atomic(self.folder / f"{shard.id}.json", json.dumps(payload).encode())


def lock_run_folder(folder: Path) -> None:
    """Lock the run folder ``folder`` for this process (an exclusive ``flock`` on the folder itself: nothing is
    written, and the lock ends with the process however it ends); :class:`FakeGradientError` at once if another
    process holds it. Taking it again in the same process counts once more (see :func:`release_run_folder`).
    Where locks are not supported (Windows, some network file systems), nothing is locked."""
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    if fcntl is None:
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FakeGradientError(f"another `fakegradient evaluate` is running into {folder}: wait until it ends, or "
                                "choose another --out") from None
    except OSError:  # no lock support here
        os.close(fd)
        return
    _HELD[key] = [fd, 1]


def release_run_folder(folder: Path) -> None:
    """Release one hold of this process on ``folder``'s lock; the lock ends with the last."""
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            os.close(_HELD.pop(key)[0])


def unfinished_run(folder: Path) -> bool:
    """Whether ``folder`` holds the shards of an interrupted run (a finished run removes its folder)."""
    try:
        return folder.is_dir() and any(folder.iterdir())
    except OSError:  # unreadable: ShardStore reports it
        return False


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)
