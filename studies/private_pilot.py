"""The black-box budgets of :mod:`studies.private`, chosen on the attacker's own images, not the evaluation images.

Trains the owner's private model exactly as ``studies.private`` does (same ``--seed``), takes the first ``--images``
of the attacker's split (images the evaluation never uses) and runs the library's Square and HopSkipJump on the
unprotected model at L2 ``--eps``: Square once per budget in ``--square-budgets`` (its schedule depends on the
budget), HopSkipJump once per ``init_eval`` in ``--hsj-init-evals`` at the largest of ``--hsj-budgets`` (a run stops
an image once it is within eps, so its success at a smaller budget B is "within eps after at most B queries").
Writes ``pilot.json`` and ``pilot.md``: the unprotected images broken per budget (the study's sanity rule asks for
at least half) and the seconds each took.

    python -m studies.private_pilot --seed 0 --out reports/private/pilot
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fakegradient.atomic import write_bytes_atomic
from fakegradient.errors import FakeGradientError

from .kit import command_line, int_list, markdown_table, rate_text, run_study, study_parser

MODULE = "studies.private_pilot"


def _attack(name: str, model: torch.nn.Module, images: torch.Tensor, eps: float, queries: int, seed: int,
            **params: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """(broken (B,), queries used (B,), seconds) of ``name`` on ``model``, one image at a time, image i
    seeded by [seed, i]."""
    from fakegradient.attacks import HopSkipJump, SquareAttack

    attack = SquareAttack(eps=eps, queries=queries) if name == "square" else HopSkipJump(queries=queries, eps=eps,
                                                                                        **params)
    broken, used = np.zeros(len(images), dtype=bool), np.zeros(len(images), dtype=int)
    start = time.perf_counter()
    for i in tqdm(range(len(images)), desc=f"{name} {queries} {params or ''}", leave=False):
        result = attack(model, images[i:i + 1], generator=np.random.default_rng([seed, i]))
        broken[i], used[i] = bool(result.success[0]), int(result.queries[0])
    return broken, used, time.perf_counter() - start


def pilot(args: Any) -> dict:
    from .mnist import load_mnist
    from .private import Recipe, owner_net, splits, train

    torch.set_num_threads(1)
    images, labels = load_mnist()
    x_all = torch.from_numpy(images).float().div(255).unsqueeze(1)
    y_all = torch.from_numpy(labels)
    parts = splits(len(x_all), args.seed, 1000)
    owner = train(owner_net(), x_all[parts["owner"]], y_all[parts["owner"]], Recipe(epochs=args.epochs), args.seed)
    x = x_all[parts["attacker"][:args.images]]
    square = {}
    for budget in args.square_budgets:
        broken, used, seconds = _attack("square", owner, x, args.eps, budget, args.seed)
        square[budget] = {"broken": int(broken.sum()), "n": len(x), "median_queries": float(np.median(used)),
                          "seconds": round(seconds, 1)}
    hsj = {}
    top = max(args.hsj_budgets)
    for init_eval in args.hsj_init_evals:
        broken, used, seconds = _attack("hopskipjump", owner, x, args.eps, top, args.seed, init_eval=init_eval)
        hsj[init_eval] = {"by_budget": {b: int((broken & (used <= b)).sum()) for b in args.hsj_budgets},
                          "n": len(x), "seconds_at_largest": round(seconds, 1)}
    return {"command": args.command, "seed": args.seed, "eps": args.eps, "images": "the first "
            f"{len(x)} of the attacker's split (studies.private.splits; never evaluation images)",
            "attacker_indices": parts["attacker"][:args.images].tolist(), "square": square, "hopskipjump": hsj,
            "machine": args.machine}


def write(out: Path, record: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "pilot.json", (json.dumps(record, indent=1) + "\n").encode())
    square = [[b, rate_text(c["broken"], c["n"]), f"{c['median_queries']:.0f}", c["seconds"]]
              for b, c in record["square"].items()]
    budgets = list(next(iter(record["hopskipjump"].values()))["by_budget"])
    hsj = [[init, *(rate_text(c["by_budget"][b], c["n"]) for b in budgets), c["seconds_at_largest"]]
           for init, c in record["hopskipjump"].items()]
    lines = ["# Black-box budgets of studies.private: a pilot on the unprotected model", "",
             (f"Command: `{record['command']}` ({record['machine']}). Images: {record['images']}. Each cell: "
              f"unprotected images broken at L2 eps = {record['eps']} (the study's sanity rule: at least half)."), "",
             "## Square", "", *markdown_table(["queries", "broken", "median queries", "seconds"], square), "",
             "## HopSkipJump (one run per init_eval at the largest budget; broken within B queries)", "",
             *markdown_table(["init_eval", *(f"≤ {b} queries" for b in budgets), "seconds"], hsj), ""]
    path = out / "pilot.md"
    write_bytes_atomic(path, "\n".join(lines).encode())
    return path


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, MODULE, Path("reports/private/pilot"), "rewrite pilot.md from pilot.json")
    parser.add_argument("--images", type=int, default=20, help="attacker-split images to attack")
    parser.add_argument("--eps", type=float, default=3.0, help="L2 budget (studies.private's --transfer-eps)")
    parser.add_argument("--epochs", type=int, default=8, help="the owner's training epochs")
    parser.add_argument("--square-budgets", default="500,1000,2000", help="Square queries per image to try")
    parser.add_argument("--hsj-budgets", default="500,1000,2000,4000", help="HopSkipJump budgets to read off")
    parser.add_argument("--hsj-init-evals", default="100,50,20", help="HopSkipJump init_eval values to try")
    parser.add_argument("--machine", default="unspecified machine", help="recorded in the report")
    args = parser.parse_args(argv)
    args.command = command_line(MODULE, argv)

    def work() -> Path:
        if args.from_stored:
            try:
                return write(args.out, json.loads((args.out / "pilot.json").read_text()))
            except (OSError, ValueError) as exc:
                raise FakeGradientError(f"cannot read {args.out / 'pilot.json'}: {exc}") from None
        args.square_budgets = int_list(args.square_budgets, "--square-budgets")
        args.hsj_budgets = int_list(args.hsj_budgets, "--hsj-budgets")
        args.hsj_init_evals = int_list(args.hsj_init_evals, "--hsj-init-evals")
        if not (1 <= args.images <= 2000 and args.eps > 0 and args.epochs >= 1
                and min(args.square_budgets + args.hsj_budgets) >= 3 and min(args.hsj_init_evals) >= 1):
            raise FakeGradientError("need 1 <= --images <= 2000, --eps > 0, --epochs >= 1, budgets >= 3, "
                                    "init_evals >= 1")
        return write(args.out, pilot(args))

    return run_study(work)


if __name__ == "__main__":
    raise SystemExit(main())
