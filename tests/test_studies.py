"""The studies package: one entry style for every study, and its ``--from-stored`` reports equal the committed
ones (reports/seven_mnist, reports/mnist/*, reports/ablations) when rebuilt from their stored files."""

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studies import STUDIES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", STUDIES)
def test_every_study_takes_seed_out_and_from_stored(name, capsys):
    study = importlib.import_module(f"studies.{name}")
    with pytest.raises(SystemExit) as exit_:
        study.main(["--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: python -m studies.{name} ")
    assert all(option in usage for option in ("--seed", "--out", "--from-stored"))


@pytest.mark.parametrize("name", STUDIES)
def test_from_stored_without_stored_files_is_one_line_and_exit_2(name, tmp_path, capsys):
    study = importlib.import_module(f"studies.{name}")
    assert study.main(["--from-stored", "--out", str(tmp_path / "empty")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and "Traceback" not in line


def test_python_m_studies_lists_every_study():
    listed = subprocess.run([sys.executable, "-m", "studies"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=True).stdout.splitlines()
    assert [line.split()[2] for line in listed] == [f"studies.{name}" for name in STUDIES]


def _matplotlib(name):  # these write PNGs too: seconds of matplotlib
    return pytest.param(*name, marks=pytest.mark.slow)


@pytest.mark.parametrize("name, folder, report", [
    ("mnist_classes", "reports/mnist/classes", "report.md"),
    ("mnist_direction", "reports/mnist/direction", "report.md"),
    _matplotlib(("mnist_recipes", "reports/mnist/recipes", "report.md")),
    _matplotlib(("seven_mnist", "reports/seven_mnist", "report.md")),
    _matplotlib(("ablations", "reports/ablations", "ablations.md")),
    _matplotlib(("private", "reports/private", "report.md")),
    _matplotlib(("private", "reports/private_head", "report.md")),
    _matplotlib(("private", "reports/private_block", "report.md")),
    _matplotlib(("file_only", "reports/file_only", "report.md")),
])
def test_from_stored_rebuilds_the_committed_report(name, folder, report, tmp_path, monkeypatch, capsys):
    """Rebuilt from a copy of the committed folder (the same relative --out, so the command it quotes is
    the same): the report is the committed one, line for line."""
    shutil.copytree(ROOT / folder, tmp_path / folder)
    (tmp_path / folder / report).unlink()
    monkeypatch.chdir(tmp_path)
    study = importlib.import_module(f"studies.{name}")
    assert study.main(["--from-stored", "--out", folder]) == 0, capsys.readouterr().err
    rebuilt = (tmp_path / folder / report).read_text().splitlines()
    committed = (ROOT / folder / report).read_text().splitlines()
    assert len(rebuilt) == len(committed) > 5
    for new, old in zip(rebuilt, committed):
        assert new == old


def test_the_library_never_imports_the_studies():
    import ast

    offenders = []
    for path in sorted((ROOT / "src" / "fakegradient").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.name}: {n}" for n in names if n == "studies" or n.startswith("studies.")]
    assert not offenders
