"""``python -m studies``: the studies and what each measures (first line of its docstring)."""

import ast
from pathlib import Path

from . import STUDIES

for name in STUDIES:
    doc = ast.get_docstring(ast.parse((Path(__file__).parent / f"{name}.py").read_text())) or ""
    print(f"python -m studies.{name:<16} {doc.splitlines()[0] if doc else ''}")
