"""evaluation/stages/reuse.py: a scheme reuses the original's black-box run only where its served scores are
provably the original's on every query; the reused rows equal those of attacking the scheme for real."""

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fakegradient.attacks import hopskipjump
from fakegradient.attacks.hopskipjump import HopSkipJump
from fakegradient.attacks.square import SquareAttack
from fakegradient.data import Sample
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.plan import Shard
from fakegradient.evaluation.runtimes import OnnxRuntime
from fakegradient.evaluation.stages import adaptive, attackers, reuse
from fakegradient.evaluation.stages.adaptive import target
from fakegradient.evaluation.stages.attackers import ATTACKERS, Context, _head_name
from fakegradient.evaluation.workbench import Workbench, served_pipelines
from fakegradient.head import replace_module
from fakegradient.methods import ORIGINAL

SCHEMES = [ORIGINAL, "fake-gradient", "random-weight", "fake-gradient-hardened"]
N = 4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bench(digits_model):
    """The digits model on 32x32 images (pooled to 8x8 inside): ART's L2 Square sends NaN
    images on 8x8 ones (1-pixel stripes) and where clipping at 0 or 1 zeroes a window's perturbation (a
    0/0: all-NaN outputs, which the reuse accepts for Square where the scheme's are all NaN too)."""
    model, x, y = digits_model
    config = EvaluationConfig(models=["digits"], methods=SCHEMES, seed=0, adaptive=True, blackbox_queries=100)
    original = Normalized(nn.Sequential(nn.AvgPool2d(4), model), (0.0,), (1.0,)).eval()
    x = x.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    samples = [Sample(Path(f"d{i}.png"), int(label)) for i, label in enumerate(y[:N])]
    bench = Workbench(config, original, served_pipelines(original, config, 0, x[:1]), samples, 0, x[:N])
    for method in ("random-weight", "fake-gradient-hardened"):
        served, secret = bench.served[method]
        name = _head_name(bench, served)
        replace_module(served, name, ExactReals(served.get_submodule(name), original.get_submodule(
            _head_name(bench, original)), secret.class_positions()))
    return bench


class ExactReals(nn.Linear):
    """A served head whose real rows are the original head's output itself, and whose fakes sit 100 below.

    On 8x8 digits, Random Weight's real rows differ from the original's by one ulp at batch 1 (a 20-row vs
    a 10-row product) and its fakes can come second: the reuse rightly refuses both for Square, which reads
    the scores (tests below; HopSkipJump, which reads only decisions, accepts both where no decision changes).
    This head has neither, as the ImageNet models' schemes measured (benchmarks/matrix_speed.py)."""

    def __init__(self, served: nn.Linear, original: nn.Linear, positions: np.ndarray):
        super().__init__(served.in_features, served.out_features)
        with torch.no_grad():
            self.weight.copy_(served.weight)
            self.bias.copy_(served.bias - 100.0)
        self.real = (original.weight.detach().clone(), original.bias.detach().clone())  # the same op as its own
        self.positions = torch.as_tensor(positions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x).clone()
        out[:, self.positions] = nn.functional.linear(x, *self.real)
        return out


BUDGETS = {"base_l2": 0.56, "whitebox_l2": 1.12, "blackbox_l2": 2.5}


def run_matrix_row(bench, name: str, enabled: bool, order=SCHEMES) -> dict:
    """``name`` on every scheme in ``order`` with a fresh memo: method → (adversarial, queries, defended)."""
    bench.memo = {}
    reuse.ENABLED = enabled
    try:
        images = bench.images
        with torch.no_grad():
            truth = bench.original(images).argmax(1)
        out = {}
        for method in order:
            scheme = target(bench, method)
            attempt = ATTACKERS[name].run(Context(bench, scheme, images, 0, BUDGETS, truth))
            with torch.no_grad():
                defended = (scheme.device(attempt.adversarial).argmax(1) == truth).tolist()
            out[method] = (attempt.adversarial, attempt.queries.tolist(), defended)
        return out
    finally:
        reuse.ENABLED = True


@pytest.mark.parametrize("name", ["square", "hopskipjump"])
@pytest.mark.parametrize("original_first", [True, False])
def test_reused_rows_equal_attacking_each_scheme(bench, name, original_first):
    order = SCHEMES if original_first else SCHEMES[::-1]  # a scheme before the original: it runs the original
    real = run_matrix_row(bench, name, enabled=False)
    fast = run_matrix_row(bench, name, enabled=True, order=order)
    verdict = next(v for k, v in bench.memo.items() if k[0] == "same-scores" and k[1] == name)
    exact = {"random-weight", "fake-gradient-hardened"}  # the paper's fakes win: attacked for real
    assert verdict - {reuse.real_outputs(m) for m in SCHEMES} == exact
    assert {reuse.real_outputs(m) for m in exact} <= verdict  # their real outputs alone: the original's too
    for method in SCHEMES:
        adversarial, queries, defended = fast[method]
        assert queries == real[method][1], method
        assert defended == real[method][2], method
        assert torch.allclose(adversarial, real[method][0], rtol=0, atol=1e-6), method


class SecondPlaceFakes(ExactReals):
    """A served head whose real rows are the original head's output itself and whose fakes all sit halfway
    between the top two real scores: above the second, below the first, on every input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real = nn.functional.linear(x, *self.real)
        top2 = real.topk(2, dim=1).values
        out = ((top2[:, :1] + top2[:, 1:]) / 2).expand(len(x), self.out_features).clone()
        out[:, self.positions] = real
        return out


def digits_random_weight(digits_model) -> tuple:
    """Random Weight on digits at batch ``N``: (original, bench, its head's name, Random Weight's served pipeline,
    its secret, images)."""
    model, x, _ = digits_model
    config = EvaluationConfig(models=["digits"], methods=[ORIGINAL, "random-weight"], seed=0)
    original = Normalized(model, (0.0,), (1.0,)).eval()
    served = served_pipelines(original, config, 0, x[:1])
    bench = Workbench(config, original, served, [], 0, x[:N])
    pipeline, secret = served["random-weight"]
    return original, bench, _head_name(bench, original), pipeline, secret, x


def with_head(bench, original, head: str, pipeline, secret, kind: type[ExactReals]) -> tuple[Normalized, str]:
    """A copy of ``pipeline`` whose head is ``kind`` over its own and the original's head: (copy, head's name)."""
    served = copy.deepcopy(pipeline)
    name = _head_name(bench, served)
    replace_module(served, name, kind(served.get_submodule(name), original.get_submodule(head),
                                      secret.class_positions()))
    return served, name


def test_fakes_that_come_second_are_not_reused_for_square_but_are_for_hopskipjump(digits_model):
    """Fakes above the second score (Square reads that margin) but below the first (all HopSkipJump reads):
    Square's run is not reused, HopSkipJump's is. The real rows are the original's by construction (Random
    Weight's own head can be an ulp off, CPU by CPU: see the next test)."""
    original, bench, head, pipeline, secret, x = digits_random_weight(digits_model)
    between, name = with_head(bench, original, head, pipeline, secret, SecondPlaceFakes)
    with torch.no_grad():
        fakes_max = between(x[:N]).index_fill(1, torch.as_tensor(secret.class_positions()), -torch.inf).amax(1)
        top2 = original(x[:N]).topk(2, dim=1).values
    assert (fakes_max > top2[:, 1]).all() and (fakes_max < top2[:, 0]).all()  # the premise
    verdicts = []
    for labels in (None, attackers._labels(original, x[:N])):
        schemes = {"random-weight": (between, name, secret.class_positions(), None)}
        with reuse.SameScores(original, head, schemes, labels) as watch, torch.no_grad():
            original(x[:N])
        verdicts.append(watch.verdict())
    assert verdicts == [set(), {"random-weight"}]


class OneUlpOff(ExactReals):
    """:class:`ExactReals` with one class's real output the next float up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        column = int(self.positions[3])
        out[:, column] = torch.nextafter(out[:, column], torch.full_like(out[:, column], torch.inf))
        return out


def test_an_ulp_off_real_row_is_not_reused_where_the_attack_reads_scores(digits_model):
    """Random Weight's real rows are a 20-row product, the original's a 10-row one: they can differ by an ulp, CPU
    by CPU and batch by batch. A head whose real rows are the original's is reused; one a single ulp off in one
    class is not for an attack reading scores (Square), and is for one reading only its decisions (HopSkipJump),
    which the ulp does not change here."""
    original, bench, head, pipeline, secret, x = digits_random_weight(digits_model)
    labels = attackers._labels(original, x[:N])
    verdicts = []
    for kind in (ExactReals, OneUlpOff):
        served_copy, name = with_head(bench, original, head, pipeline, secret, kind)
        schemes = {"random-weight": (served_copy, name, secret.class_positions(), None)}
        for read in (None, labels):
            with reuse.SameScores(original, head, schemes, read) as watch, torch.no_grad():
                assert torch.equal(served_copy(x[:N]).argmax(1), torch.as_tensor(secret.class_positions())[
                    original(x[:N]).argmax(1)])  # the premise: the ulp moves no top-1
            verdicts.append(watch.verdict())
    assert verdicts == [{"random-weight"}, {"random-weight"}, set(), {"random-weight"}]


class WinningFake(ExactReals):
    """:class:`ExactReals` with one fake output 100 above every real one: the served top-1 on every input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        fake = min(set(range(self.out_features)) - set(self.positions.tolist()))
        out[:, fake] = out[:, self.positions].amax(dim=1) + 100.0
        return out


def test_a_winning_fake_is_the_same_decision_only_where_no_label_is_on_top(digits_model):
    """HopSkipJump asks one question per query: is the top-1 the image's label? A fake on top answers "no", as
    the original does where its top-1 is none of the labels; where it is one, the answers differ."""
    original, bench, head, pipeline, secret, x = digits_random_weight(digits_model)
    winning, name = with_head(bench, original, head, pipeline, secret, WinningFake)
    schemes = {"random-weight": (winning, name, secret.class_positions(), None)}
    with torch.no_grad():
        top1 = original(x[:N]).argmax(1)
    others = torch.as_tensor(sorted(set(range(10)) - set(top1.tolist())))
    verdicts = []
    for labels in (others, top1[:1]):
        with reuse.SameScores(original, head, schemes, labels) as watch, torch.no_grad():
            original(x[:N])
        verdicts.append(watch.verdict())
    assert len(others) > 0 and verdicts == [{"random-weight"}, set()]


def test_the_labels_are_those_hopskipjump_compares_against(bench, monkeypatch):
    """The decision check is exact only if every image's label is among ``_labels``: record the label the
    wrapper computes for each image (its first adversarial search receives it) and compare."""
    seen = []
    first = hopskipjump._first_adversarial
    monkeypatch.setattr(hopskipjump, "_first_adversarial",
                        lambda counter, x, label, *a: seen.append(int(label)) or first(counter, x, label, *a))
    HopSkipJump(queries=20)(bench.original, bench.images)
    assert seen == attackers._labels(bench.original, bench.images).tolist() and len(seen) == N


def test_hopskipjump_on_a_head_an_ulp_off_is_the_originals_run(digits_model):
    """End to end: with one class an ulp off, Random Weight's HopSkipJump row reuses the original's run and
    equals attacking it for real (images, queries, decisions); its Square row is attacked for real."""
    original, bench, head, pipeline, secret, _ = digits_random_weight(digits_model)
    bench.config = replace(bench.config, blackbox_queries=300)
    bench.served["random-weight"] = (with_head(bench, original, head, pipeline, secret, OneUlpOff)[0], secret)
    order = [ORIGINAL, "random-weight"]
    for name, reused in (("hopskipjump", True), ("square", False)):
        real = run_matrix_row(bench, name, enabled=False, order=order)
        fast = run_matrix_row(bench, name, enabled=True, order=order)
        verdict = next(v for k, v in bench.memo.items() if k[0] == "same-scores" and k[1] == name)
        assert ("random-weight" in verdict) is reused, name
        assert any(not torch.equal(a, b) for a, b in zip(fast[ORIGINAL][0], bench.images)), name  # it moved
        for method in order:
            assert fast[method][1] == real[method][1] and fast[method][2] == real[method][2], (name, method)
            assert torch.allclose(fast[method][0], real[method][0], rtol=0, atol=1e-6), (name, method)
        if reused:
            assert fast["random-weight"][1] == fast[ORIGINAL][1]


def test_the_same_row_is_the_originals_query_for_query(bench):
    fast = run_matrix_row(bench, "square", enabled=True)
    assert fast["random-weight"][1] == fast[ORIGINAL][1]
    assert fast["fake-gradient"][1] != fast[ORIGINAL][1]  # the paper's scheme: its own attack


def scheme_tampered(bench, method: str, where: str) -> Normalized:
    """A copy of ``method``'s served pipeline whose real rows (``head``) or trunk (``trunk``) differ slightly."""
    served = copy.deepcopy(bench.served[method][0])
    with torch.no_grad():
        if where == "head":
            served.get_submodule(_head_name(bench, bench.served[method][0])).real[1][0] += 1e-3  # class 0
        else:
            next(p for p in served.parameters() if p.dim() == 4).mul_(1.001)
    return served


@pytest.mark.parametrize("where", ["head", "trunk"])
def test_scores_that_differ_anywhere_are_not_reused(bench, where):
    """The per-query check catches a real row that differs; the per-shape check a trunk that differs (the
    per-query check reads the original's trunk features, so only the latter can see it)."""
    method = "random-weight"
    served = scheme_tampered(bench, method, where)
    head = _head_name(bench, bench.served[method][0])
    schemes = {method: (bench.served[method][0], head, bench.served[method][1].class_positions(), None),
               "tampered": (served, head, bench.served[method][1].class_positions(), None)}
    with reuse.SameScores(bench.original, _head_name(bench, bench.original), schemes) as watch, torch.no_grad():
        bench.original(bench.images)
        bench.original(torch.rand(3, *bench.images.shape[1:]))
    assert watch.verdict() == {method}


def test_fakes_reaching_the_second_score_are_not_reused(bench):
    """A scheme whose fake outputs reach the original's second-largest score changes the margin ART reads."""
    method = "random-weight"
    served = copy.deepcopy(bench.served[method][0])
    head = _head_name(bench, bench.served[method][0])
    rows = bench.served[method][1].class_positions()
    fakes = sorted(set(range(2 * len(rows))) - set(rows.tolist()))
    with torch.no_grad():
        served.get_submodule(head).bias[fakes[0]] += 1e3  # this fake now wins everywhere
    schemes = {"tampered": (served, head, rows, None)}
    with reuse.SameScores(bench.original, _head_name(bench, bench.original), schemes) as watch, torch.no_grad():
        bench.original(bench.images)
    assert watch.verdict() == set()


@pytest.mark.parametrize("original_first", [True, False])
def test_a_reused_row_is_timed_once(bench, monkeypatch, original_first):
    """The adaptive stage's timing: the row that ran the original's Square owns its time and passes (one
    forward row per query at least); the other row says it reused it and runs no pass."""
    monkeypatch.setattr(adaptive, "ATTACKERS", {"square": ATTACKERS["square"]})
    bench.memo = {}
    budgets = tuple(sorted((BUDGETS | {"blackbox_queries": 100.0}).items()))
    order = [ORIGINAL, "random-weight"] if original_first else ["random-weight", ORIGINAL]
    parts = {m: adaptive.run(bench, Shard("digits", m, 0, N, "adaptive", budgets), bench.images, bench.samples)
             for m in order}
    first, second = (parts[m].values["timing"]["square"] for m in order)
    assert first["reused"] == [] and second["reused"] == [f"{order[0]}/square"]
    queries = sum(r["queries"] for r in parts[ORIGINAL].records)
    assert first["passes"]["fwd"][1] >= queries > 0
    assert second["passes"] == {"fwd": [0, 0], "fwd_grad": [0, 0], "bwd": [0, 0]} and second["roofline_s"] == 0
    assert second["own_s"] < first["own_s"]
    assert [r["queries"] for r in parts[ORIGINAL].records] == [r["queries"] for r in parts["random-weight"].records]


@pytest.mark.parametrize("name", ["query-only-square", "query-only-hopskipjump"])
def test_a_query_only_row_that_found_every_real_output_reuses_the_originals_run(bench, name, monkeypatch):
    """An attacker that found exactly the real positions of Random Weight and the hardened scheme
    (ExactReals: their real outputs are the original's bit for bit) attacks a permutation of the original's
    logits: their rows are the original's run, query for query, and equal attacking for real. The paper's
    scheme (real outputs of a 20-row product) is reused only if they were the original's on every query."""
    found = attackers._query_only

    def discovery(bench, scheme):  # on these digits, noise finds 80-90 % of their real rows: give them all
        if scheme.method == "fake-gradient":
            return found(bench, scheme)
        return attackers.Recovery("the real positions", 0.0, 0, 1.0, 1.0, scheme.real_rows())
    monkeypatch.setattr(attackers, "_query_only", discovery)
    monkeypatch.setitem(attackers.RECOVERERS, name, discovery)
    calls = []
    cls = SquareAttack if name == "query-only-square" else HopSkipJump
    real_call = cls.__call__
    monkeypatch.setattr(cls, "__call__", lambda self, model, *a, **k: calls.append(model) or real_call(
        self, model, *a, **k))
    real = run_matrix_row(bench, name, enabled=False)
    assert len(calls) == len(SCHEMES)  # each scheme attacked for real
    calls.clear()
    fast = run_matrix_row(bench, name, enabled=True)
    verdict = next(v for k, v in bench.memo.items() if k[0] == "same-scores")
    reused = {m for m in SCHEMES[1:] if reuse.real_outputs(m) in verdict}
    assert {"random-weight", "fake-gradient-hardened"} <= reused
    assert len(calls) == len(SCHEMES) - len(reused)  # the original once, and the schemes not reused
    for method in SCHEMES:
        adversarial, queries, defended = fast[method]
        assert queries == real[method][1], method
        assert defended == real[method][2], method
        assert torch.allclose(adversarial, real[method][0], rtol=0, atol=1e-6), method
    for method in reused:
        assert fast[method][1] == fast[ORIGINAL][1]


def test_real_outputs_must_include_every_class_in_served_order():
    with pytest.raises(ValueError, match="every class"):
        reuse._read(np.array([0, 3, 5]), np.array([0, 3, 4]))
    with pytest.raises(ValueError, match="ascending"):
        reuse._read(np.array([0, 3, 5]), np.array([5, 3, 0]))
    positions, read = reuse._read(np.array([5, 0, 3]), np.array([0, 3, 5]))
    assert positions.tolist() == [2, 0, 1] and read.tolist() == [0, 3, 5]


def test_a_query_only_row_missing_a_real_output_is_attacked_for_real(bench, monkeypatch):
    """The same rows but one real position swapped for a fake: not the original's scores, its own attack."""
    def discovery(bench, scheme):
        rows = np.sort(scheme.real_rows())
        fake = min(set(range(2 * len(rows))) - set(rows.tolist()))
        return attackers.Recovery("all but one", 0.0, 0, 0.9, None, np.sort(np.r_[rows[1:], fake]))
    monkeypatch.setattr(attackers, "_query_only", discovery)
    monkeypatch.setitem(attackers.RECOVERERS, "query-only-square", discovery)
    calls = []
    real_call = SquareAttack.__call__
    monkeypatch.setattr(SquareAttack, "__call__", lambda self, model, *a, **k: calls.append(model) or real_call(
        self, model, *a, **k))
    run_matrix_row(bench, "query-only-square", enabled=True)
    assert len(calls) == len(SCHEMES)


def _head(weight: list, bias: list) -> nn.Linear:
    head = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weight))
        head.bias.copy_(torch.tensor(bias))
    return head


SWAPPED = {"swapped", "swapped, real outputs only"}


@pytest.mark.parametrize(("labels", "also"), [(None, set()), (torch.tensor([0]), set()), (torch.tensor([1]), set()),
                                              (torch.tensor([2]), SWAPPED)])
def test_tied_top_scores_are_reused_only_where_the_key_keeps_their_order(labels, also):
    """Logits [1, 1, 0]: argmax is class 0 of the tie. Served at positions (0, 2, 4), class 0 still comes
    first; at (2, 0, 4) class 1 does, and an attack reading the top-1 would see the other class. One that
    reads only "is the top-1 the label?" sees the same answer where the label is neither tied class; a tie
    with the label (HopSkipJump's boundary search met one on EfficientNet-Lite0's photos) stays refused."""
    original = nn.Sequential(nn.Flatten(), _head([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], [0.0, 0.0, 0.0])).eval()
    rows = {0: [1.0, 0.0], 1: [1.0, 0.0], 2: [0.0, 0.0]}

    def served(positions):
        weight, bias = [[0.0, 0.0]] * 6, [-10.0] * 6  # fakes far below
        for c, p in enumerate(positions):
            weight[p], bias[p] = rows[c], 0.0
        return nn.Sequential(original[0], _head(weight, bias)).eval(), np.array(positions)
    (kept, kept_at), (swapped, swapped_at) = served((0, 2, 4)), served((2, 0, 4))
    schemes = {"kept": (kept, "1", kept_at, None), "swapped": (swapped, "1", swapped_at, None),
               "swapped, real outputs only": (swapped, "1", swapped_at, np.array([0, 2, 4]))}
    with reuse.SameScores(original, "1", schemes, labels) as watch, torch.no_grad():
        assert original(torch.tensor([[[1.0, 0.0]]])).tolist() == [[1.0, 1.0, 0.0]]
        assert original(torch.full((1, 1, 2), torch.nan)).isnan().all()  # argmax: the first NaN, on every side
    assert watch.verdict() == {"kept"} | also


def test_queries_answered_by_onnxruntime_are_watched_and_those_the_head_did_not_see_prove_nothing(bench):
    """``--query-runtime onnxruntime`` runs each trunk in ONNX Runtime and each head in torch: the head sees every
    query and the scheme is reused as with torch (the two trunks: the same export of the same weights, the
    same computation). An answer that bypasses the head proves nothing: no scheme reuses the run."""
    method = "random-weight"
    served = bench.served[method][0]
    schemes = {method: (served, _head_name(bench, served), bench.served[method][1].class_positions(), None)}
    original = bench.original

    def verdict() -> set[str]:
        with reuse.SameScores(original, _head_name(bench, original), schemes) as watch, torch.no_grad():
            original(bench.images)
            original(torch.rand(3, *bench.images.shape[1:]))
        return watch.verdict()

    assert verdict() == {method}
    bypass = copy.deepcopy(original).eval()  # the same outputs, but the original's head sees nothing
    try:
        for pipeline in (original, served):
            pipeline.answer = OnnxRuntime(pipeline, bench.images[:1])
        assert verdict() == {method}
        original.answer = lambda images: bypass(images)  # a callable: a module would become a submodule
        assert verdict() == set()
    finally:
        original.answer = served.answer = None
