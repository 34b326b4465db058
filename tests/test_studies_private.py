"""studies.private, its attackers (studies.private_attacks) and its report
(studies.private_report): the paired matrix and the decision rule on planted outcomes, the splits, the noise
discovery, the learned row classifier and the read-out attacker on a small trained model, and a short end-to-end
run whose sanity baselines behave."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from fakegradient import protect
from studies import private
from studies.private_attacks import (
    ATTACKS,
    QUERY_ATTACKS,
    Columns,
    Decoded,
    discovery_curve,
    fit_decoder,
    noise_discovery,
    pgd_l2,
    readout_curve,
)
from studies.private_report import THREATS, decision, matrix


def _rows(scheme: str, defended: list[bool | None], column: str = "naive_defended") -> list[dict]:
    rows = []
    for i, value in enumerate(defended):
        row = {"image": i, "scheme": scheme, "functionality": True,
               **{f"{a}_defended": None for a in ATTACKS}, **{f"{a}_queries": None for a in QUERY_ATTACKS}}
        row[column] = value
        rows.append(row)
    return rows


def test_the_matrix_pairs_each_scheme_with_the_original_on_the_same_images():
    by = {"original": _rows("original", [False] * 5 + [True]), "a": _rows("a", [True] * 5 + [False])}
    cells = matrix(by)
    assert cells["original"]["naive"] == {"k": 1, "n": 6}  # the sanity baseline: no test against itself
    cell = cells["a"]["naive"]
    assert (cell["k"], cell["n"], cell["only_original"], cell["only_scheme"]) == (5, 6, 1, 5)
    assert cell["p"] == pytest.approx(0.21875)  # 2 * (1 + 6) / 64, the library's exact McNemar
    assert cells["a"]["pgd"] is None  # not run: not a 0/0 cell


def test_the_decision_takes_each_schemes_strongest_attack_and_never_a_control():
    def scheme_rows(name: str, naive: list[bool], pgd: list[bool]) -> list[dict]:
        rows = _rows(name, naive)
        for row, value in zip(rows, pgd):
            row["pgd_defended"] = value
        return rows

    n = 40
    by = {"original": scheme_rows("original", [False] * n, [False] * n),
          "fake-gradient": scheme_rows("fake-gradient", [True] * n, [False] * 30 + [True] * 10),
          "mixing": scheme_rows("mixing", [True] * 30 + [False] * 10, [True] * 25 + [False] * 15),
          "scaled-copy": scheme_rows("scaled-copy", [True] * n, [True] * n)}
    record = {"splits": {"eval": list(range(n))},
              "schemes": {name: {"secret_bytes": 10, "decrypt_us_per_image": 1.0,
                                 "readout_curve": {"10": 5, "500": 39}} for name in by}}
    (white, *_) = decision(matrix(by), record)
    assert white["threat"] == "naive white-box client"
    assert white["strongest"]["fake-gradient"]["attack"] == "pgd"  # 10/40 below its naive 40/40
    assert white["use"] == "mixing" and white["significant"]  # 25/40 beats 10/40; the control (40/40) is never used
    assert white["defended"]["k"] == 25 and white["original"]["k"] == 0
    assert white["leak"]["labelled_for_90pct"] == 500


def test_the_splits_are_disjoint_and_a_function_of_the_seed():
    parts = private.splits(5000, 3, 600)
    assert [len(parts[n]) for n in ("owner", "attacker", "eval")] == [2000, 2000, 600]
    assert len(set(np.concatenate(list(parts.values())).tolist())) == 4600
    assert all(np.array_equal(parts[n], private.splits(5000, 3, 600)[n]) for n in parts)
    assert not np.array_equal(parts["eval"], private.splits(5000, 4, 600)["eval"])


def test_the_public_digits_are_drawn_like_mnist():
    x, y = private.public_digits()
    assert x.shape == (1797, 1, 28, 28) and y.shape == (1797,) and set(y.tolist()) == set(range(10))
    assert float(x.min()) == 0.0 and float(x.max()) <= 1.0
    assert float(x[:, :, :4].abs().max()) == 0.0 and float(x[:, :, :, -4:].abs().max()) == 0.0  # the 4-pixel frame


@pytest.mark.parametrize("start", sorted(private.FINE_TUNED))
def test_fine_tuning_trains_the_named_layers_only_and_leaves_the_public_model_alone(start, one_torch_thread):
    x, y = private.public_digits()
    public = private.train(private.owner_net(), x[:256], y[:256], private.Recipe(epochs=1), 5)
    before = {name: p.detach().clone() for name, p in public.named_parameters()}
    tuned = private.fine_tune(public, x[256:512], y[256:512], private.Recipe(epochs=1), 0, start)
    for name, p in tuned.named_parameters():
        trained = name.split(".")[0] in private.FINE_TUNED[start]
        assert torch.equal(p, before[name]) != trained, name  # copied weights stay, trained ones move
    assert all(torch.equal(p, before[name]) for name, p in public.named_parameters())
    again = private.fine_tune(public, x[256:512], y[256:512], private.Recipe(epochs=1), 1, start)
    assert not torch.equal(again[9].weight, tuned[9].weight)  # the head is new per seed


def test_the_record_says_where_a_fine_tuned_owners_models_come_from(one_torch_thread):
    from types import SimpleNamespace

    from studies.private_report import models_text

    x, y = private.public_digits()
    public = private.train(private.owner_net(), x[:128], y[:128], private.Recipe(epochs=1), 5)
    args = SimpleNamespace(owner_start="block", public_epochs=1, row_models=2)
    record = private._provenance(args, public, x[128:256], y[128:256])
    assert record["owner"].startswith("the public model with a new head") and "layer 7 and layer 9" in record["owner"]
    assert 0 <= record["public_eval_accuracy"] <= 1 and "2 more such fine-tunings" in record["row_models"]
    accuracies = {"owner_eval_accuracy": 0.9, "surrogate_eval_accuracy": 0.8, "surrogate_agreement_with_owner": 0.85}
    assert models_text(record | accuracies).startswith("Public model: studies.private.owner_net trained from scratch")
    scratch = private._provenance(SimpleNamespace(owner_start="scratch", row_models=1), None, x, y)
    assert "public" not in scratch
    assert models_text(scratch | accuracies).startswith("Owner's CNN (trained from scratch): 90.0 %")


def test_discovery_curve_and_columns(digits_model, one_torch_thread):
    model, images, _ = digits_model
    served, key = protect(model, example_input=images[:2], seed=0)
    curve = discovery_curve(served, (1, 8, 8), key.class_positions(), (2, 16), seed=0)
    assert curve[16] == 10  # the red team's finding, on a model the attacker never saw
    loudest = noise_discovery(served, (1, 8, 8), 10, 16, seed=0, most=True)
    assert key.is_fake(loudest).all()  # ranked the other way: the fakes
    with torch.no_grad():
        real = Columns(served, key.class_positions())(images[:5])
        torch.testing.assert_close(real, model(images[:5]))


def test_the_read_out_attacker_learns_the_classes_from_mixed_outputs(digits_model, one_torch_thread):
    """(e) needs no key: from labelled queries it reads the classes out of the mixing scheme's outputs, and PGD
    through that read-out moves the real decision as it does on the unprotected model."""
    model, images, labels = digits_model
    served, key = protect(model, method="mixing", example_input=images[:2], seed=0)
    weight, bias = fit_decoder(served, images[:200], labels[:200], 10)
    decoded = Decoded(served, weight, bias)
    x = images[200:300]
    with torch.no_grad():
        clean = model(x).argmax(1)
        assert (decoded(x).argmax(1) == clean).float().mean() > 0.85
    adversarial = pgd_l2(decoded, x, eps=3.0)
    assert ((adversarial - x).flatten(1).norm(dim=1) <= 3.0 + 1e-4).all()
    with torch.no_grad():
        broken = (key.decrypt(served(adversarial)).argmax(1) != clean).float().mean()
    assert broken > 0.5, broken


def test_the_read_out_curve_grows_with_the_labelled_queries(digits_model, one_torch_thread):
    model, images, labels = digits_model
    served, _ = protect(model, example_input=images[:2], seed=0)
    x = images[200:]
    with torch.no_grad():
        clean = model(x).argmax(1).numpy()
    curve = readout_curve(served, images[:200], labels[:200], x, clean, (10, 200))
    assert curve[200] >= 0.85 * len(x) and curve[10] < curve[200], curve


def test_the_file_only_attacker_learns_real_rows_from_heads_it_protected_itself(digits_model, one_torch_thread):
    """The study's file-only attacker: the library's row classifier trained on heads the attacker protected with
    keys of its own finds the real rows of a head under a key it never saw."""
    from fakegradient.attacks.row_classifier import fit_row_classifier

    model, images, _ = digits_model
    for method in ("fake-gradient", "random-weight"):
        examples = private.row_examples([model], method, {}, 6, images[:2])
        assert all(mask.sum() == 10 and len(mask) == 20 for _, _, mask in examples)
        classifier = fit_row_classifier(examples)
        served, key = protect(model, method=method, example_input=images[:2], seed=0)
        believed = classifier.believed_real(*private._head(served, key), 10)
        assert len(set(believed.tolist()) & set(key.class_positions().tolist())) >= 9, method


@pytest.mark.slow
def test_a_short_run_writes_the_matrix(tmp_path, capsys):
    out = tmp_path / "private"
    assert private.main(["--seed", "1", "--out", str(out), "--eval-images", "12", "--epochs", "1",
                         "--labelled-queries", "100", "--hard-images", "4", "--square-queries", "40", "--hsj-queries", "30", "--row-models", "0",
                         "--row-keys", "2"]) == 0, capsys.readouterr().err
    with open(out / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 * len(private.SCHEMES)
    assert all(f"{a}_defended" in rows[0] for a in ATTACKS) and "qo_square_queries" in rows[0]
    record = json.loads((out / "run.json").read_text())
    assert record["seed"] == 1 and len(record["splits"]["eval"]) == 12 and record["hard_images"] == 4
    assert (record["square_queries"], record["hsj_queries"]) == (40, 30)
    assert {"training", "transfer"} <= set(record["stage_seconds"])
    assert {"naive", "cw", "square", "hopskipjump"} <= set(record["schemes"]["original"]["stage_seconds"])
    assert record["schemes"]["fake-gradient"]["secret_bytes"] > 0
    assert "fileonly_found" in record["schemes"]["fake-gradient-hardened"]
    results = json.loads((out / "results.json").read_text())
    original = results["matrix"]["original"]
    # sanity baselines: every white-box attack breaks the unprotected model (DeepFool unbounded: all of them)
    assert original["naive"]["k"] == 0 and original["fileonly"]["k"] == 0
    assert original["pgd"]["k"] <= 2 and original["apgd"]["k"] <= 2 and original["cw"]["n"] == 4
    assert original["square"]["n"] == 4 and results["matrix"]["mixing"]["qo_square"] is None
    assert [entry["threat"] for entry in results["decision"]] == list(THREATS)
    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name, _, _ in private.SCHEMES) and "## Decision table" in report
    assert "(Square 40 queries, HopSkipJump 30 queries (init_eval 20, max_eval 10000, init_size 100) per image;" in report and "## Time per stage" in report
    assert (out / "private.png").stat().st_size > 0
    (out / "report.md").unlink()
    assert private.main(["--from-stored", "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == report
    assert private.main(["--out", str(out), "--eval-images", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: need 1 <= --eval-images")


@pytest.mark.slow
def test_the_budget_pilot_attacks_attacker_images_only(tmp_path, capsys):
    from studies import private_pilot

    out = tmp_path / "pilot"
    assert private_pilot.main(["--seed", "1", "--out", str(out), "--images", "3", "--epochs", "1",
                               "--square-budgets", "10,20", "--hsj-budgets", "20,40", "--hsj-init-evals", "5"]) == 0, \
        capsys.readouterr().err
    record = json.loads((out / "pilot.json").read_text())
    attacker = set(private.splits(5000, 1, 1000)["attacker"].tolist())
    assert set(record["attacker_indices"]) <= attacker and len(record["attacker_indices"]) == 3
    assert set(record["square"]) == {"10", "20"} and record["square"]["20"]["n"] == 3
    by_budget = record["hopskipjump"]["5"]["by_budget"]
    assert by_budget["20"] <= by_budget["40"] <= 3  # a smaller budget never breaks more
    report = (out / "pilot.md").read_text()
    (out / "pilot.md").unlink()
    assert private_pilot.main(["--from-stored", "--out", str(out)]) == 0
    assert (out / "pilot.md").read_text() == report
    capsys.readouterr()  # the progress bars so far
    assert private_pilot.main(["--out", str(out), "--images", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: need 1 <= --images")
