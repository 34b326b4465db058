"""What every study shares: rates as ``"k/n = p % [lo–hi]"``, CSV and markdown tables, the evaluation's
``per_image.csv`` read back, and the one entry style (``python -m studies.<name> --seed S --out DIR
[--from-stored]``: argparse, a report path printed, a bad value one line on stderr and exit 2)."""

from __future__ import annotations

import argparse
import csv
import io
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from fakegradient.atomic import write_bytes_atomic
from fakegradient.errors import FakeGradientError
from fakegradient.evaluation.intervals import Rate
from fakegradient.evaluation.records import ImageRecord, l2_ratios

# -- rates ------------------------------------------------------------------------------------------------


def rate_text(k: int, n: int) -> str:
    """``"332/500 = 66 % [62–70]"``: k of n with its 95 % Wilson interval (percent, rounded)."""
    rate = Rate(k, n)
    low, high = rate.ci95_pct
    return f"{k}/{n} = {rate.pct:.0f} % [{low:.0f}–{high:.0f}]"


def aggregate_rate(aggregate: dict, metric: str) -> str:
    """A rate of :func:`fakegradient.evaluation.records.aggregate`'s output as :func:`rate_text`; "—" when
    it has none."""
    n = aggregate.get(f"{metric}_n") or 0
    return rate_text(aggregate[f"{metric}_k"], n) if n else "—"


# -- tables -----------------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table as lines: the header, its rule, one line per row (cells as ``str``)."""
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells")
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """``rows`` (dicts with the first row's keys) as a CSV file with a header, written atomically."""
    if not rows:
        raise FakeGradientError(f"nothing to write to {path}")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode())


def read_csv(path: Path, types: dict[str, Callable[[str], Any]]) -> list[dict]:
    """The rows of a CSV file with a header, column ``name`` parsed by ``types[name]`` (others dropped)."""
    try:
        with open(path, newline="") as handle:
            return [{name: parse(row[name]) for name, parse in types.items()} for row in csv.DictReader(handle)]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise FakeGradientError(f"cannot read {path}: {exc}") from None


def parse_bool(text: str) -> bool:
    return text == "True"


# -- the evaluation's per_image.csv ------------------------------------------------------------------------

_PARSERS = {"str": str, "int": int, "float": float, "bool": parse_bool,
            "int | None": lambda v: None if v in ("", "None") else int(v)}


def records_from_csv(path: Path) -> list[ImageRecord]:
    """The :class:`ImageRecord` rows of a stored ``per_image.csv`` (extra columns ignored; columns the
    file predates, e.g. ``rho_normalized``, keep their defaults)."""
    types = {f.name: _PARSERS[str(f.type)] for f in fields(ImageRecord)}  # annotations are strings there
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [ImageRecord(**{name: parse(row[name]) for name, parse in types.items() if name in row})
                for row in rows]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise FakeGradientError(f"cannot read records from {path}: {exc}") from None


def write_records_csv(path: Path, records: list[ImageRecord]) -> None:
    """``per_image.csv`` as the evaluation writes it: every record field, ``functionality``,
    ``defense_success`` and ``l2_ratio_to_original`` (‖r‖₂ here / ‖r‖₂ on the original model, same image;
    nan for the original)."""
    write_csv(path, [asdict(record) | {"functionality": record.functionality,
                                       "defense_success": record.defense_success, "l2_ratio_to_original": ratio}
                     for record, ratio in zip(records, l2_ratios(records))])


# -- the entry style ---------------------------------------------------------------------------------------


def study_parser(doc: str, module: str, out: Path, from_stored: str) -> argparse.ArgumentParser:
    """The parser every study starts from: ``--seed``, ``--out`` (default ``out``) and ``--from-stored``
    (``from_stored``: what it rebuilds from the files under ``--out`` without running anything)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="every random choice of the study (NOT secure keys)")
    parser.add_argument("--out", type=Path, default=out, help=f"the study's folder (default {out})")
    parser.add_argument("--from-stored", action="store_true", help=f"run nothing: {from_stored}")
    return parser


def run_study(work: Callable[[], Path]) -> int:
    """A study's ``main``: run ``work`` (returns the report written), print its path; a bad option or
    value is one line on stderr and exit 2."""
    try:
        print(f"report: {work()}")
    except (FakeGradientError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def done_before(folder: Path) -> bool:
    """Whether a study run's ``folder`` is complete (its ``run.json``, written last, exists); says so if it is."""
    done = (folder / "run.json").is_file()
    if done:
        print(f"{folder}: done before, kept")
    return done


def int_list(text: str, option: str) -> list[int]:
    """``"10,100"`` → [10, 100]; anything else is a clear error naming ``option``."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise FakeGradientError(f"{option}: expected comma-separated integers, got {text!r}") from None


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that ran a study, as a user types it: ``python -m <module> <arguments>``."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])
