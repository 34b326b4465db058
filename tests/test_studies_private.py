"""studies.private and its attackers (studies.private_attacks): the paired exact test against known values, the
splits, the noise discovery and the read-out attacker on a small trained model, and a short end-to-end run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from fakegradient import protect
from studies import private
from studies.private_attacks import (Columns, Decoded, discovery_curve, fit_decoder, mcnemar_exact, noise_discovery,
                                     pgd_l2)


def test_mcnemar_exact_against_known_values():
    assert mcnemar_exact([False] * 6, [True] * 6) == (6, 0, 0.03125)  # 2 / 2**6
    b01, b10, p = mcnemar_exact([False] * 5 + [True], [True] * 5 + [False])
    assert (b01, b10) == (5, 1) and p == pytest.approx(0.21875)  # 2 * (1 + 6) / 64
    assert mcnemar_exact([True, False], [True, False]) == (0, 0, 1.0)
    # agrees with scipy's exact binomial test on the discordant pairs
    from scipy.stats import binomtest

    a = [bool(v) for v in np.random.default_rng(0).integers(0, 2, 300)]
    b = [bool(v) for v in np.random.default_rng(1).integers(0, 2, 300)]
    b01, b10, p = mcnemar_exact(a, b)
    assert p == pytest.approx(binomtest(b01, b01 + b10, 0.5).pvalue)
    with pytest.raises(ValueError):
        mcnemar_exact([True], [])


def test_the_splits_are_disjoint_and_a_function_of_the_seed():
    parts = private.splits(5000, 3, 600)
    assert [len(parts[n]) for n in ("owner", "attacker", "eval")] == [2000, 2000, 600]
    assert len(set(np.concatenate(list(parts.values())).tolist())) == 4600
    assert all(np.array_equal(parts[n], private.splits(5000, 3, 600)[n]) for n in parts)
    assert not np.array_equal(parts["eval"], private.splits(5000, 4, 600)["eval"])


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


@pytest.mark.slow
def test_a_short_run_writes_the_matrix(tmp_path, capsys):
    out = tmp_path / "private"
    assert private.main(["--seed", "1", "--out", str(out), "--eval-images", "12", "--epochs", "1",
                         "--labelled-queries", "100"]) == 0, capsys.readouterr().err
    with open(out / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 * len(private.SCHEMES)
    record = json.loads((out / "run.json").read_text())
    assert record["seed"] == 1 and len(record["splits"]["eval"]) == 12
    assert record["schemes"]["fake-gradient"]["secret_bytes"] > 0
    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name, _, _ in private.SCHEMES)
    assert (out / "private.png").stat().st_size > 0
    (out / "report.md").unlink()
    assert private.main(["--from-stored", "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == report
    assert private.main(["--out", str(out), "--eval-images", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: need 1 <= --eval-images")
