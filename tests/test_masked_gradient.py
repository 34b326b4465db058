"""studies/masked_gradient.py: the served top-1's lead and whether the cross-entropy PGD and APGD ascend has an
input gradient at all; its committed report rebuilds from its per-photo CSV."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from studies import masked_gradient
from studies.kit import parse_bool, read_csv

ROOT = Path(__file__).resolve().parents[1]


def linear(scale: float) -> nn.Module:
    """Images (B, 1, 2, 2) → 3 logits: scale × pixel 0, pixel 1, pixel 2."""
    head = nn.Linear(4, 3)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0, 0], head.weight[1, 1], head.weight[2, 2] = scale, 1.0, 1.0
    return nn.Sequential(nn.Flatten(), head).eval()


def test_a_lead_past_float32_underflow_leaves_no_gradient():
    images = torch.zeros(4, 1, 2, 2)
    images[:, 0, 0, 0] = torch.tensor([1.0, 0.4, 0.2, 0.0])  # pixels 1 and 2 at 0: logits (200 v, 0, 0)
    lead, gradient = masked_gradient.lead_and_gradient(linear(200.0), images)
    torch.testing.assert_close(lead, torch.tensor([200.0, 80.0, 40.0, 0.0]))
    # past 149 ln 2 the runners-up's softmax underflows to 0 (and the top's is exactly 1); at 80 it is a
    # normal float (e^-80 ≈ 1.8e-35), which pixels 1 and 2 pass to the gradient
    assert (gradient == 0).tolist() == [True, False, False, False]
    assert masked_gradient.UNDERFLOW > 100 and float(torch.exp(torch.tensor(-masked_gradient.UNDERFLOW - 1))) == 0
    for i in range(4):  # each image's loss on its own: the batch gives the same per-image gradients
        alone = masked_gradient.lead_and_gradient(linear(200.0), images[i:i + 1])[1]
        torch.testing.assert_close(alone, gradient[i:i + 1], rtol=1e-5, atol=0)


def test_the_committed_report_rebuilds_from_its_csv(tmp_path):
    out = tmp_path / "masked_gradient"
    shutil.copytree(ROOT / "reports" / "masked_gradient", out)
    committed = json.loads((out / "results.json").read_text())
    (out / "results.json").unlink()
    (out / "report.md").unlink()
    assert masked_gradient.main(["--from-stored", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text()) == committed
    assert (out / "report.md").read_text() == (ROOT / "reports" / "masked_gradient" / "report.md").read_text()
    fake = committed["summary"]["mobilenet_v2:IMAGENET1K_V1"]["fake-gradient"]
    assert 0 < fake["zero_k"] <= fake["n"] and fake["lead_max"] > masked_gradient.UNDERFLOW
    for model in committed["summary"].values():  # only the paper's scheme: no other scheme masks its gradient
        assert all(s["zero_k"] == 0 for method, s in model.items() if method != "fake-gradient")


def test_the_apgd_summary_counts_masked_photos_and_pairs_the_losses():
    """k of n per (scheme, loss), how many defended photos had a zero gradient, and the exact McNemar tests on
    the photos both arms ran (values known: 3 discordant pairs one way, none the other: p = 0.25)."""
    photos = [f"p{i}.jpg" for i in range(4)]
    rows = [{"model": "m", "method": method, "image": p, "gradient_zero": method == "fake-gradient" and i < 2}
            for method in ("original", "fake-gradient") for i, p in enumerate(photos)]
    defended = {("original", "cross_entropy"): [True, False, False, False],  # p0: zero gradient on fake-gradient only
                ("original", "difference_logits_ratio"): [False] * 4,
                ("fake-gradient", "cross_entropy"): [True] * 4,
                ("fake-gradient", "difference_logits_ratio"): [True, False, False, False]}
    attacks = [{"model": "m", "method": method, "loss": loss, "image": p, "defended": d, "l2": 0.1,
                "served_top1_moved": loss != "cross_entropy"}
               for (method, loss), flags in defended.items() for p, d in zip(photos, flags)]
    summary = masked_gradient.summarise_attacks(rows, attacks, {"m": 0.2})["m"]
    assert summary["whitebox_l2"] == 0.2
    assert summary["cells"]["fake-gradient/cross_entropy"] == {"k": 4, "n": 4, "defended_zero_gradient": 2,
                                                               "defended_served_moved": 0}
    assert summary["cells"]["fake-gradient/difference_logits_ratio"] == {
        "k": 1, "n": 4, "defended_zero_gradient": 1, "defended_served_moved": 1}
    assert summary["cells"]["original/cross_entropy"] == {"k": 1, "n": 4, "defended_zero_gradient": 0,
                                                          "defended_served_moved": 0}  # its own gradient counts
    tests = {(t["a"], t["b"]): t for t in summary["paired"]}
    ce_vs_dlr = tests["fake-gradient/cross_entropy", "fake-gradient/difference_logits_ratio"]
    assert (ce_vs_dlr["only_a"], ce_vs_dlr["only_b"], ce_vs_dlr["p"]) == (3, 0, 0.25)
    dlr_vs_original = tests["fake-gradient/difference_logits_ratio", "original/difference_logits_ratio"]
    assert (dlr_vs_original["only_a"], dlr_vs_original["only_b"], dlr_vs_original["p"]) == (1, 0, 1.0)
    ce_vs_original = tests["fake-gradient/cross_entropy", "original/cross_entropy"]
    assert (ce_vs_original["only_a"], ce_vs_original["only_b"], ce_vs_original["p"]) == (3, 0, 0.25)


# The 29-photo matrices made on another CPU than the study (an AMD EPYC; the study, MobileNetV2 and Lite0: an Intel
# Xeon; both noted by hand, the runs predate the recorded "cpu"), and the photos whose APGD decision differs there.
# Rerun on the EPYC (stop note of 2026-12-07, not committed: the matrix's code path, subnormals flushed and not, at
# both budgets), APGD broke imagenet_02_438 each time; on the Xeon it returned the clean photo.
OTHER_CPU = {"adaptive_efficientnet_lite1", "adaptive_efficientnet_lite2"}
CPU_DEPENDENT = {("efficientnet_lite1", "fake-gradient", "imagenet_02_438.jpg")}


def test_the_committed_apgd_reproduces_the_matrix_and_backs_the_prose():
    """The study's cross-entropy APGD is the matrix's row (same budget, steps, random starts): on every model whose
    committed matrix ran the study's 29 photos it defends the photos the matrix records, photo by photo, but for
    :data:`CPU_DEPENDENT` (each defended in the study, broken in the matrix, with a served gradient below 5e-10 as
    docs/security.md says); and what docs/security.md says in words holds on every model: the loss that cannot
    saturate gets through on more photos (p < 0.05), Fake Gradient still defends more than the original with it
    (p < 0.05), and on most photos it defends the served top-1 moved."""
    study_dir = ROOT / "reports" / "masked_gradient"
    results = json.loads((study_dir / "results.json").read_text())
    attacks = read_csv(study_dir / "attacks.csv", masked_gradient.ATTACK_FIELDS)
    study = {(a["model"], a["method"], a["image"]): a["defended"] for a in attacks if a["loss"] == "cross_entropy"}
    gradient = {(r["model"], r["method"], r["image"]): r["gradient_max_abs"]
                for r in read_csv(study_dir / "per_image.csv", masked_gradient.FIELDS)}
    fields = {"model": str, "method": str, "attacker": str, "image": str, "defense_success": parse_bool}
    compared, differ = {}, set()
    for folder in ("adaptive", "adaptive_efficientnet_lite0", "adaptive_efficientnet_lite1",
                   "adaptive_efficientnet_lite2"):
        matrix = json.loads((ROOT / "reports" / folder / "results.json").read_text())
        ((spec, adaptive),) = matrix["adaptive"].items()
        if matrix["data"]["distinct_photos"] != 29 or matrix["config"]["bias"] != "paper":
            continue  # an older matrix on 23 photos: another budget
        # DeepFool's median ‖r‖₂, which sets the budget, differs by 2e-6 of itself between the two CPUs
        tolerance = 1e-5 if folder in OTHER_CPU else 1e-9
        assert results["apgd"][spec]["whitebox_l2"] == pytest.approx(adaptive["budgets"]["whitebox_l2"], rel=tolerance)
        for row in read_csv(ROOT / "reports" / folder / "attackers_per_image.csv", fields):
            if row["attacker"] == "apgd" and row["method"] in masked_gradient.ATTACKED:
                assert row["model"] == spec
                key = (spec, row["method"], row["image"])
                if study[key] != row["defense_success"]:
                    differ.add(key)
                    assert folder in OTHER_CPU and study[key] and gradient[key] < 5e-10, key
                compared[folder] = compared.get(folder, 0) + 1
    assert compared == {"adaptive": 58, "adaptive_efficientnet_lite0": 58, "adaptive_efficientnet_lite1": 58,
                        "adaptive_efficientnet_lite2": 58}
    assert differ == CPU_DEPENDENT
    for entry in results["apgd"].values():
        tests = {(t["a"], t["b"]): t for t in entry["paired"]}
        fewer = tests["fake-gradient/cross_entropy", "fake-gradient/difference_logits_ratio"]
        assert fewer["only_a"] > fewer["only_b"] and fewer["p"] < 0.05
        more = tests["fake-gradient/difference_logits_ratio", "original/difference_logits_ratio"]
        assert more["only_a"] > more["only_b"] and more["p"] < 0.05
        dlr = entry["cells"]["fake-gradient/difference_logits_ratio"]
        assert 2 * dlr["defended_served_moved"] > dlr["k"]
