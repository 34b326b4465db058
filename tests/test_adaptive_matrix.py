"""The scheme × attacker matrix (`evaluate --adaptive`) on the small digits model: every attacker breaks the
unprotected model at its budget (its sanity baseline), key-recovery attackers recover known keys, the
too-weak marking, and the matrix, CSV and figures written."""

import csv
from pathlib import Path

import pytest

from fakegradient.data import Sample
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.paired import mcnemar_exact
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.records import AttackerRecord
from fakegradient.evaluation.report import write_report
from fakegradient.evaluation.runner import EvaluationResult, environment, evaluate_model
from fakegradient.evaluation.stages.attackers import ATTACKERS
from fakegradient.evaluation.summary import AdaptiveResult
from fakegradient.methods import METHODS

SCHEMES = ["original", "fake-gradient", "random-weight", "fake-gradient-hardened"] + (
    ["device-head"] if "device-head" in METHODS else [])
N = 8
BLACK_BOX = ("square", "hopskipjump", "query-only-square", "query-only-hopskipjump")
QUERY_ONLY_LIMITS = ["query-only-square=4", "query-only-hopskipjump=4"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def matrix_run(digits_model):
    """The whole matrix on 8 digits (8x8, DeepFool's median ‖r‖₂ ≈ 0.56): budgets 2x (white box) and
    4.5x (black box, 500 queries) that median, as the library tests found enough on this model."""
    model, x, y = digits_model
    samples = [Sample(Path(f"d{i}.png"), int(label)) for i, label in enumerate(y[:N])]
    config = EvaluationConfig(models=["digits"], methods=SCHEMES, seed=0, timing_repeats=3, adaptive=True,
                              batch_size=4, blackbox_queries=500, blackbox_factor=4.5, feature_steps=10,
                              iterative_steps=20, attacker_images=["square=4", "hopskipjump=4", *QUERY_ONLY_LIMITS])
    evaluation = evaluate_model("digits", Normalized(model, (0.0,), (1.0,)), x[:N], samples, config, progress=False)
    return config, evaluation


@pytest.mark.slow
def test_every_attacker_breaks_the_unprotected_model_at_its_budget(matrix_run):
    _, evaluation = matrix_run
    rows = {(r["method"], r["attacker"]): r for r in evaluation.adaptive.matrix()}
    for attacker in ATTACKERS:
        baseline = rows["original", attacker]
        assert baseline["k"] <= baseline["n"] // 2 and not baseline["too_weak"], (attacker, baseline)
        assert baseline["n"] == (4 if attacker in BLACK_BOX else N)
    for method in SCHEMES:
        assert rows[method, "sanity"]["k"] == 0, method  # with the secret the evaluation fails every defense
        assert rows[method, "transfer"]["k"] == 0, method  # the service computes the public model's logits
    for attacker in BLACK_BOX:
        queries = rows["original", attacker]["median_queries"]
        assert queries is not None and 1 <= queries <= 500


@pytest.mark.slow
def test_key_recovery_attackers_recover_known_keys(matrix_run):
    _, evaluation = matrix_run
    recovery = evaluation.adaptive.key_recovery
    assert recovery["fake-gradient"]["key-recovery-file"]["recovered_pct"] == 100.0
    assert recovery["fake-gradient"]["key-recovery-file"]["oracle"] == "bias-equality"
    learned = recovery["fake-gradient"]["learned-rows"]  # fitted on the ImageNet models' protected heads
    assert learned["oracle"].startswith("learned rows (trained on mobilenet_v2") and learned["recovered_pct"] == 100.0
    for attacker in ("query-only-square", "query-only-hopskipjump"):  # from noise alone, shared discovery
        assert recovery["fake-gradient"][attacker]["recovered_pct"] == 100.0
        assert 4 <= recovery["fake-gradient"][attacker]["queries"] <= 16
    for method in ("fake-gradient", "random-weight", "fake-gradient-hardened"):
        for attacker in ("known-plaintext-weights", "known-plaintext-outputs"):
            assert recovery[method][attacker]["recovered_pct"] == 100.0, (method, attacker)
            assert recovery[method][attacker]["mapped_pct"] == 100.0, (method, attacker)
    privacy = evaluation.adaptive.privacy()
    for method in SCHEMES:  # the public model names every real top-1, whatever the scheme
        assert privacy[method]["k"] == privacy[method]["n"] == N, (method, privacy[method])
    rows = {(r["method"], r["attacker"]): r for r in evaluation.adaptive.matrix()}
    assert rows["fake-gradient", "known-plaintext-weights"]["k"] == 0  # then DeepFool on the real rows wins
    if "device-head" in SCHEMES:
        assert recovery["device-head"]["key-recovery-file"]["recovered_pct"] is None  # no head in the file
        assert recovery["device-head"]["known-plaintext-weights"]["mapped_pct"] == 100.0


def test_a_row_whose_baseline_fails_is_too_weak():
    def records(method, attacker, defended):
        return [AttackerRecord("m", method, attacker, f"i{i}", d, 0.1, 0.2) for i, d in enumerate(defended)]

    result = AdaptiveResult(
        records(*("original", "pgd", [False] * 4)) + records("fake-gradient", "pgd", [True, False, False, False])
        + records("original", "square", [True, True, True, False]) + records("fake-gradient", "square", [True] * 4),
        budgets={"base_l2": 0.1, "whitebox_l2": 0.2, "blackbox_l2": 4.0, "blackbox_queries": 10.0})
    rows = {(r["method"], r["attacker"]): r for r in result.matrix()}
    assert not rows["original", "pgd"]["too_weak"] and not rows["fake-gradient", "pgd"]["too_weak"]
    assert rows["fake-gradient", "pgd"]["baseline_k"] == 0 and rows["fake-gradient", "pgd"]["k"] == 1
    # Square changed 1 of 4 unprotected answers (< 50 %): its 4/4 on fake-gradient means nothing
    assert rows["original", "square"]["too_weak"] and rows["fake-gradient", "square"]["too_weak"]
    assert rows["fake-gradient", "square"]["baseline_k"] == 3


@pytest.mark.slow
def test_the_matrix_csv_and_figures_are_written(matrix_run, tmp_path):
    config, evaluation = matrix_run
    write_report(EvaluationResult(config, [evaluation], [], environment()), tmp_path)
    with open(tmp_path / "attackers.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(1 for r in evaluation.adaptive.matrix())
    assert {"k", "n", "rate_pct", "ci95_low_pct", "ci95_high_pct", "budget_l2", "median_queries", "baseline_k",
            "too_weak", "seconds", "under_powered", "deepfool_within_k", "p_vs_original", "own_seconds",
            "own_cpu_seconds", "reused",
            "fwd_calls", "fwd_rows", "fwd_grad_calls", "fwd_grad_rows", "bwd_calls", "bwd_rows", "roofline_seconds",
            "roofline_fraction"} <= set(rows[0])
    for row in rows:  # round 2's rows: a fraction where the row ran passes; none where it reused all it needed
        if row["attacker"] in ("naive", "transfer"):
            assert row["own_seconds"] == "" and row["roofline_fraction"] == ""
        elif int(row["fwd_calls"]) + int(row["fwd_grad_calls"]):  # no upper bound: two timings of a shared machine
            fraction, own, roof = (float(row[c]) for c in ("roofline_fraction", "own_seconds", "roofline_seconds"))
            assert 0 < fraction == pytest.approx(roof / own, rel=1e-6), row
        else:
            assert row["roofline_fraction"] == "" and row["reused"], row
    by_cell = {(r["method"], r["attacker"]): r for r in rows}
    assert by_cell["fake-gradient", "feature-space"]["reused"] == "original/feature-space"
    # on digits Random Weight's fakes come second: Square reads them, the scheme is attacked for real
    assert by_cell["random-weight", "square"]["reused"] == "" and int(by_cell["random-weight", "square"]["fwd_rows"])
    own = [float(r["own_seconds"]) for r in rows if r["own_seconds"]]
    assert evaluation.adaptive.distinct_seconds() == pytest.approx(sum(own))
    with open(tmp_path / "attackers_per_image.csv") as handle:
        per_image = list(csv.DictReader(handle))
    outcome = {(r["method"], r["attacker"], r["image"]): r["defense_success"] == "True" for r in per_image}
    for row in rows:  # every scheme cell's p recomputed from the per-image rows, paired by image
        if row["method"] == "original":
            assert row["p_vs_original"] == ""
            continue
        images = [i for (m, a, i) in outcome if (m, a) == (row["method"], row["attacker"])]
        here = sum(outcome[row["method"], row["attacker"], i] and not outcome["original", row["attacker"], i]
                   for i in images)
        there = sum(outcome["original", row["attacker"], i] and not outcome[row["method"], row["attacker"], i]
                    for i in images)
        assert float(row["p_vs_original"]) == pytest.approx(mcnemar_exact(here, there)), row
    attackers = {r["attacker"] for r in rows}
    assert attackers == set(ATTACKERS)
    report = (tmp_path / "report.md").read_text()
    assert "## Adaptive attackers: digits" in report and "privacy" in report and ", p = " in report
    assert "of roofline" in report and "(reuses original/feature-space)" in report
    assert "Distinct computation, all rows:" in report and "| naive |" not in report.split("Time per attacker")[1]
    for name in ("fig_matrix_digits.png", "fig_budgets_digits.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_attackers_given_zero_images_are_skipped_and_the_report_still_written(digits_model, tmp_path):
    """``--attacker-images name=0`` runs an attacker on no image (a black-box-only run at larger n, say):
    its rows are absent, not zero of zero, and the report, CSV and figures are written all the same."""
    model, x, y = digits_model
    samples = [Sample(Path(f"d{i}.png"), int(label)) for i, label in enumerate(y[:4])]
    kept = {"square", "sanity"}
    config = EvaluationConfig(models=["digits"], methods=["original", "fake-gradient"], seed=0, timing_repeats=3,
                              adaptive=True, batch_size=4, blackbox_queries=300, blackbox_factor=4.5,
                              attacker_images=[f"{a}=0" for a, at in ATTACKERS.items()
                                               if at.run is not None and a not in kept] + ["square=3"])
    evaluation = evaluate_model("digits", Normalized(model, (0.0,), (1.0,)), x[:4], samples, config, progress=False)
    rows = evaluation.adaptive.matrix()
    assert {r["attacker"] for r in rows} == kept | {a for a, at in ATTACKERS.items() if at.run is None}
    assert {r["n"] for r in rows if r["attacker"] == "square"} == {3}
    write_report(EvaluationResult(config, [evaluation], [], environment()), tmp_path)
    with open(tmp_path / "attackers.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert (tmp_path / "fig_matrix_digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_command_parses_back_into_the_same_config():
    import dataclasses
    import shlex

    from fakegradient.cli import build_parser

    config = EvaluationConfig(methods=SCHEMES, data="photos", seed=0, adaptive=True, blackbox_factor=10.0,
                              attacker_images=["pgd=12", "hopskipjump=1"])
    command = config.command()
    assert command.startswith("fakegradient evaluate ") and "--attacker-images pgd=12,hopskipjump=1" in command
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert EvaluationConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvaluationConfig)}) == config


@pytest.mark.parametrize("bad", [["pgd"], ["pgd=-1"], ["pgd=2", "pgd=3"], ["=3"]])
def test_attacker_images_must_be_distinct_names_with_counts(bad):
    from fakegradient.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="attacker_images"):
        EvaluationConfig(attacker_images=bad)


def test_adaptive_needs_the_original_for_its_baselines():
    from fakegradient.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="original"):
        EvaluationConfig(methods=["fake-gradient"], adaptive=True)


def test_unknown_attacker_names_are_refused():
    from fakegradient.errors import InvalidArgument
    from fakegradient.evaluation.stages.adaptive import check_limits

    assert check_limits({"square": 2}) == {"square": 2}
    for bad in ({"sqaure": 2}, {"naive": 3}):  # a typo; a round-1 attacker (always on every image)
        with pytest.raises(InvalidArgument, match="attacker_images"):
            check_limits(bad)
