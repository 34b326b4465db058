"""Where the adaptive matrix's time goes: per attacker, wall time vs the forward/backward passes it ran.

    PYTHONPATH=src python benchmarks/matrix_speed.py [--model mobilenet_v2:IMAGENET1K_V1] [--data photos]
        [--limit 2] [--attackers square,hopskipjump] [--attacker-images pgd=12,square=4] [--queries 5000]
        [--threads 1,2] [--rounds 3] [--variants before,reuse,after] [--log runs/speed.jsonl]

Each attacker of :data:`ATTACKERS` runs, as the adaptive stage does, on every scheme (one shard: the first
``--limit`` images, seed 0, the budgets of a committed run of this model on exactly these photos where
``reports/`` has one, else DeepFool's on them, as the matrix computes them).
Every call of a served pipeline is counted by hooks: forward passes (with or without a graph) and their rows,
backward passes that reach the input and their rows. The **roofline** is those passes timed alone on the same
batch shapes (the median of three, in the faster of two memory layouts), summed: the unavoidable work for the
queries/iterations the attack ran. ``wall/roof`` is its fraction of the wall time, ``rest`` the difference
(ART/foolbox/Python bookkeeping, query hashing, numpy). Variants (:data:`VARIANTS`): ``before`` is the path
before issue 26 (every scheme attacked for real; ART's ``predict`` walks the served model's modules and
standardises, (x − 0) / 1, each query), ``reuse`` adds only the reuse of the original's black-box run where
:mod:`fakegradient.evaluation.stages.reuse` proves a scheme's scores equal, ``counter`` only the query
counter that keeps ART from that walk, ``flush`` only subnormals flushed to zero in PGD, EOT-PGD, APGD and C&W
(:func:`fakegradient.evaluation.stages.adaptive.attack`) — each of these three keeps ``before``'s ART
standardisation — ``after`` all three and without it (today's code), ``channels-last``
``after`` with every pipeline's weights in the channels-last layout (the roofline's faster layout; another
float computation, so its decisions are compared, not assumed), ``onnxruntime`` ``after`` with every call
without a graph answered by ONNX Runtime (:mod:`fakegradient.evaluation.runtimes`: the trunk's export, the head
in torch; again another float computation), ``channels-last-onnxruntime`` both. The memo is cleared before each
(attacker, variant), so each attacker pays its own shared computations. Rounds interleave threads,
variants and attackers (the machine is shared); the table gives the median and range over rounds, and
whether each attacker's per-image decisions (device top-1 = original clean top-1) and query counts agree
between variants.

``--attacker-images`` limits attackers to the first N images as the matrix's option does (the whole matrix at
its committed settings: the committed run's value). ``--log`` appends each (round, threads, attacker, variant)
result to a JSON-lines file as it finishes and, run again with the same settings, skips what it holds: a
whole-matrix comparison of hours can span several sessions (a pair split by a restart is less paired: its two
runs met different load). The ``all attackers (sum)`` lines add the attackers' own times: each pays its shared
computations itself (the memo is cleared per attacker) and the round-1 rows (naive, transfer, sanity) are not
attackers here, so the sum is not the report's "distinct computation"; before and after are summed alike.
A committed ``reports/matrix_speed_*/report.md`` table is rendered from every log in its folder
(``scripts/render_docs.py``), so several processes may split the attackers, each with its own log.
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from fakegradient.attacks import _adapters, apgd, hopskipjump, square
from fakegradient.attacks._adapters import QueryCounter
from fakegradient.errors import FakeGradientError
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.roofline import Passes, PassTimes
from fakegradient.evaluation.runtimes import answer_with
from fakegradient.evaluation.stages import adaptive, reuse
from fakegradient.evaluation.stages.adaptive import target
from fakegradient.evaluation.stages.attackers import ATTACKERS, Attempt, Context
from fakegradient.evaluation.workbench import Workbench, deepfool, full_fp32

METHODS = "original,fake-gradient,random-weight,fake-gradient-hardened,device-head"
ROOT = Path(__file__).resolve().parents[1]


class CommittedCounter(QueryCounter):
    """The query counter before issue 26: the model a registered submodule (ART's ``predict`` sets the mode of
    every module on every call) and each row copied to bytes to be hashed."""

    def __init__(self, model):
        super().__init__(model)
        if isinstance(model, nn.Module):
            self.add_module("walked", model)

    @staticmethod
    def digest(row: torch.Tensor) -> bytes:
        return hashlib.blake2b(row.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()


class Variant(NamedTuple):
    reuse: bool  # the original's black-box run reused where a scheme provably serves its scores
    counter: type  # the query counter
    flush: bool  # subnormals flushed in the rows marked for it
    layout: torch.memory_format  # the weights' layout
    runtime: str  # what answers the calls without a graph (evaluation/runtimes.py)
    standardised: bool = False  # ART's default (x − 0) / 1 on every query (exact; skipped since issue 26)


VARIANTS = {"before": Variant(False, CommittedCounter, False, torch.contiguous_format, "torch", True),
            "reuse": Variant(True, CommittedCounter, False, torch.contiguous_format, "torch", True),
            "counter": Variant(False, QueryCounter, False, torch.contiguous_format, "torch", True),
            "flush": Variant(False, CommittedCounter, True, torch.contiguous_format, "torch", True),
            "after": Variant(True, QueryCounter, True, torch.contiguous_format, "torch"),
            "channels-last": Variant(True, QueryCounter, True, torch.channels_last, "torch"),
            "onnxruntime": Variant(True, QueryCounter, True, torch.contiguous_format, "onnxruntime"),
            "channels-last-onnxruntime": Variant(True, QueryCounter, True, torch.channels_last, "onnxruntime")}


# ``art_classifier`` before issue 26: ART's default preprocessing, (x − 0) / 1, on every query
standardised_classifier = functools.partial(_adapters.art_classifier, preprocessing=(0.0, 1.0))


def use_variant(variant: str, pipelines: dict[str, nn.Module], example: torch.Tensor,
                answers: dict | None = None) -> None:
    """Sets the variant's switches; puts every pipeline's 4-d weights in its layout, in place, values unchanged
    (a convolution with channels-last weights runs in channels-last whatever its input's layout), and has
    its runtime answer the calls without a graph, with torch's thread count now (``answers`` keeps each
    (runtime, threads)'s answers, so each pipeline is exported once per thread count)."""
    chosen = VARIANTS[variant]
    reuse.ENABLED, adaptive.FLUSH_SUBNORMALS = chosen.reuse, chosen.flush
    square.QueryCounter = hopskipjump.QueryCounter = chosen.counter
    classifier = standardised_classifier if chosen.standardised else _adapters.art_classifier
    square.art_classifier = hopskipjump.art_classifier = apgd.art_classifier = classifier
    for pipeline in pipelines.values():
        pipeline.answer = None
        pipeline.to(memory_format=chosen.layout)
    if chosen.runtime == "torch":
        return
    answers = {} if answers is None else answers
    key = (chosen.runtime, torch.get_num_threads())
    if key not in answers:
        answer_with(chosen.runtime, pipelines.values(), example, torch.get_num_threads())
        answers[key] = {name: pipeline.answer for name, pipeline in pipelines.items()}
    for name, pipeline in pipelines.items():
        pipeline.answer = answers[key][name]


def committed_budgets(spec: str, data: str, images: int) -> dict[str, float] | None:
    """The budgets of a committed run of ``spec`` on the same ``images`` photos of ``data`` (its DeepFool median
    is over those photos), or None."""
    for path in sorted(glob.glob(str(ROOT / "reports" / "*" / "results.json"))):
        result = json.loads(Path(path).read_text())
        adaptive, source = result.get("adaptive") or {}, result.get("data") or {}
        if (spec in adaptive and adaptive[spec].get("budgets") and source.get("name") == data
                and source.get("distinct_photos") == images):
            return dict(adaptive[spec]["budgets"])
    return None


def attacker_limits(text: str, names: list[str]) -> dict[str, int]:
    """``name=N,...`` → attacker → N (unnamed attackers: no limit), parsed as the matrix's option is."""
    try:
        limits = EvaluationConfig(attacker_images=tuple(filter(None, text.split(",")))).images_per_attacker
    except FakeGradientError as err:
        raise ValueError(f"--attacker-images: {err}") from None
    unknown = sorted(set(limits) - set(names))
    if unknown:
        raise ValueError(f"--attacker-images: {unknown} not among --attackers")
    return limits


class Log:
    """Results as JSON lines (a header of the settings, then one line per run), appended as they finish."""

    def __init__(self, path: Path | None, settings: dict):
        self.path, self.done, self.resumed = path, {}, False
        if path is None:
            return
        text = path.read_text() if path.exists() else ""
        if "\n" not in text:  # new, or killed before its header was whole
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings) + "\n")
            return
        if not text.endswith("\n"):  # a line cut by a kill: dropped, so the next result starts a line of its own
            text = text[:text.rindex("\n") + 1]
            with path.open("r+") as f:
                f.truncate(len(text.encode()))
        lines = text.splitlines()
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            raise ValueError(f"--log {path}: its first line is not a settings header; use another file") from None
        if {**header, "budgets": None} != {**settings, "budgets": None}:
            raise ValueError(f"--log {path}: written with other settings ({header}); use another file")
        settings["budgets"] = header["budgets"]  # the logged runs' budgets, not a recomputation's
        self.resumed = True
        for line in lines[1:]:
            try:
                row = json.loads(line)
                row["counts"] = Counter({(p, tuple(shape), k): n for p, shape, k, n in row["counts"]})
                self.done[(row["round"], row["threads"], row["attacker"], row["variant"])] = row
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):  # not a result line: redone
                continue

    def _append(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, key: tuple, result: dict) -> None:
        if self.path is not None:
            counts = [[p, list(shape), k, n] for (p, shape, k), n in result["counts"].items()]
            self._append({**dict(zip(("round", "threads", "attacker", "variant"), key)), **result,
                          "counts": counts})


def forget_attempts(bench: Workbench) -> None:
    """Empties the workbench's memo but for the traced head names: the next attack computes afresh."""
    bench.memo = {k: v for k, v in bench.memo.items() if k[0] == "head"}


def attack_scheme(bench: Workbench, name: str, method: str, images: torch.Tensor, start: int, budgets: dict,
                  truth: torch.Tensor) -> tuple[Attempt | None, list[bool] | None]:
    """Attacker ``name`` on ``method``'s shard ``images`` (b, 3, H, W) whose first is photo ``start``, as the
    adaptive stage runs it: the attempt (None: the attacker does not apply) and, per image, whether the device
    still gives ``truth`` (b,)."""
    scheme = target(bench, method)
    attempt = adaptive.attack(name, Context(bench, scheme, images, start, budgets, truth))
    if attempt is None:
        return None, None
    with torch.no_grad():
        return attempt, (scheme.device(attempt.adversarial).argmax(1) == truth).tolist()


def run_attacker(bench: Workbench, name: str, images: torch.Tensor, budgets: dict, passes: Passes,
                 roofline: PassTimes) -> dict:
    """``name`` on every scheme, as the adaptive stage; its wall time, passes, roofline and decisions.

    images: (B, 3, H, W), the first B of the workbench's."""
    forget_attempts(bench)
    with torch.no_grad():
        truth = bench.original(images).argmax(1)
    passes.counts.clear()
    decisions, queries = {}, {}
    begin = time.perf_counter()
    for method in bench.config.methods:
        attempt, defended = attack_scheme(bench, name, method, images, 0, budgets, truth)
        if attempt is None:
            continue
        decisions[method] = defended
        queries[method] = None if attempt.queries is None else attempt.queries.tolist()
    wall = time.perf_counter() - begin
    counts = Counter(passes.counts)
    with passes.paused():
        roof = roofline.seconds(counts)
    return {"wall": wall, "roof": roof, "counts": counts, "decisions": decisions, "queries": queries}


def summary(counts: Counter) -> str:
    out = []
    for kind in ("fwd", "fwd_grad", "bwd"):
        calls = sum(n for (_, _, k), n in counts.items() if k == kind)
        rows = sum(n * shape[0] for (_, shape, k), n in counts.items() if k == kind)
        out.append(f"{calls}/{rows}")
    return " ".join(out)


def span(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2:IMAGENET1K_V1")
    parser.add_argument("--data", default="photos")
    parser.add_argument("--limit", type=int, default=2)
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--attackers", default=",".join(n for n, a in ATTACKERS.items() if a.run is not None))
    parser.add_argument("--queries", type=int, default=5000, help="black-box queries per image (the matrix: 5000)")
    parser.add_argument("--threads", default="1", help="comma-separated torch thread counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="after", help=f"comma-separated, of {', '.join(VARIANTS)}; "
                        "speed-ups are against the first")
    parser.add_argument("--attacker-images", default="", help="name=N,...: run these attackers on the first N images")
    parser.add_argument("--log", type=Path, help="append each result here as JSON lines; resume from it")
    args = parser.parse_args()

    names = args.attackers.split(",")
    unknown = [n for n in names if n not in ATTACKERS or ATTACKERS[n].run is None]
    if unknown:
        parser.error(f"unknown or round-1 attacker(s) {unknown}")
    if not set(args.variants.split(",")) <= set(VARIANTS):
        parser.error(f"--variants: each one of {', '.join(VARIANTS)}, got {args.variants!r}")
    try:
        limits = attacker_limits(args.attacker_images, names)
    except ValueError as err:
        parser.error(str(err))
    names = [n for n in names if limits.get(n) != 0]
    if not names:
        parser.error("every attacker has --attacker-images 0: nothing to run")
    config = EvaluationConfig(models=[args.model], methods=args.methods.split(","), data=args.data, limit=args.limit,
                              seed=0, adaptive=True, blackbox_queries=args.queries)
    with full_fp32():
        bench = Workbench.load(config, args.model, 0)
        images = bench.batch(0, len(bench.samples))
        budgets = committed_budgets(args.model, args.data, len(images))
        source = "committed run"
        if budgets is None:
            adversarial = deepfool(config)(bench.original, images).adversarial
            base = float((adversarial - images).flatten(1).norm(dim=1).median())
            budgets = {"base_l2": base, "whitebox_l2": config.budget_factor * base,
                       "blackbox_l2": config.blackbox_factor * base}
            source = "DeepFool on these images"
        budgets["blackbox_queries"] = float(args.queries)
        pipelines = {m: served for m, (served, _) in bench.served.items()}
        passes = Passes(pipelines).__enter__()
        variants, threads = args.variants.split(","), [int(t) for t in args.threads.split(",")]
        settings = {"model": args.model, "data": args.data, "images": len(images), "methods": args.methods,
                    "attackers": names, "limits": limits, "queries": args.queries, "budgets": budgets,
                    "variants": variants, "threads": threads}
        try:
            log = Log(args.log, settings)
        except ValueError as err:
            parser.error(str(err))
        budgets, source = settings["budgets"], f"--log {args.log}" if log.resumed else source
        print(f"{args.model} on {len(images)} of --data {args.data}; schemes {args.methods}; budgets ({source}) "
              f"white-box L2 {budgets['whitebox_l2']:.3f}, black-box L2 {budgets['blackbox_l2']:.2f}, "
              f"{args.queries} queries/image; {args.rounds} rounds, interleaved", flush=True)
        results: dict = {}
        answers: dict = {}  # (runtime, threads) → each pipeline's answer, exported once
        for r in range(args.rounds):
            for t in threads if r % 2 == 0 else threads[::-1]:
                torch.set_num_threads(t)
                # timed afresh each round, under that round's load, in the faster of two input layouts, one
                # timer per variant (its weights' layout is part of what is timed)
                rooflines = {v: PassTimes(pipelines, layouts=(torch.contiguous_format, torch.channels_last))
                             for v in variants}
                for name in names:
                    for variant in variants if r % 2 == 0 else variants[::-1]:
                        res = log.done.get((r, t, name, variant))
                        if res is None:
                            use_variant(variant, pipelines, images[:1], answers)
                            res = run_attacker(bench, name, images[:limits.get(name)], budgets, passes,
                                               rooflines[variant])
                            log.add((r, t, name, variant), res)
                        results.setdefault((t, name, variant), []).append(res)
                        print(f"  round {r + 1} threads {t} {name:<24} {variant:<6} wall {res['wall']:7.1f} s  "
                              f"roofline {res['roof']:7.1f} s", flush=True)
        passes.__exit__()
        use_variant("after", pipelines, images[:1])

    def total(threads: int, variant: str, key: str) -> list[float]:
        """Per round, ``key`` ("wall" or "roof") summed over the attackers."""
        return [sum(results[(threads, n, variant)][r][key] for n in names) for r in range(args.rounds)]

    print(f"\npasses: calls/rows of forward without graph, forward with graph, backward to the input "
          f"(summed over schemes, round 1); times in s, median [range] over {args.rounds} rounds")
    header = f"{'thr':>3} {'attacker':<24} {'variant':<7} {'wall s':>22} {'roofline s':>22} {'wall/roof':>18} " \
             f"{'rest s':>20}  {'passes (fwd fwd_grad bwd)':<28} same"
    print(header)
    print("-" * len(header))
    for t in threads:
        for name in names:
            for variant in variants:
                runs = results[(t, name, variant)]
                walls, roofs = [x["wall"] for x in runs], [x["roof"] for x in runs]
                fractions = [x["roof"] / x["wall"] for x in runs]
                rests = [x["wall"] - x["roof"] for x in runs]
                base = results[(t, name, variants[0])][0]
                same = all(x["decisions"] == base["decisions"] and x["queries"] == base["queries"] for x in runs)
                print(f"{t:>3} {name:<24} {variant:<7} {span(walls, '7.1f'):>22} {span(roofs, '7.1f'):>22} "
                      f"{span(fractions, '4.2f'):>18} {span(rests, '6.1f'):>20}  {summary(runs[0]['counts']):<28} "
                      f"{'yes' if same else 'NO'}")
        for variant in variants:
            walls, roofs = total(t, variant, "wall"), total(t, variant, "roof")
            print(f"{t:>3} {'all attackers (sum)':<24} {variant:<7} {span(walls, '7.1f'):>22} {span(roofs, '7.1f'):>22} "
                  f"{span([b / a for a, b in zip(walls, roofs)], '4.2f'):>18}")
    if len(variants) > 1:
        print(f"\nspeed-up against {variants[0]}: wall time, paired within each round (median [range]), and rows passed")
        for t in threads:
            for name in names:
                for variant in variants[1:]:
                    pairs = zip(results[(t, name, variants[0])], results[(t, name, variant)])
                    ratios = [b["wall"] / a["wall"] for b, a in pairs]
                    rows = [sum(n * shape[0] for (_, shape, _), n in results[(t, name, v)][0]["counts"].items())
                            for v in (variants[0], variant)]
                    print(f"  threads {t} {name:<24} {variant:<7} wall {span(ratios, '4.2f')}x   "
                          f"rows {rows[0] / max(rows[1], 1):4.2f}x")
            for variant in variants[1:]:
                ratios = [b / a for b, a in zip(total(t, variants[0], "wall"), total(t, variant, "wall"))]
                print(f"  threads {t} {'all attackers (sum)':<24} {variant:<7} wall {span(ratios, '4.2f')}x")

if __name__ == "__main__":
    main()
