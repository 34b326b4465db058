"""The evaluation's options (--bias, --space) in the config and the CLI, the attack space (pixel or
normalised, ρ in both), and the photos data set."""

from pathlib import Path

import pytest

from fakegradient.data import Sample
from fakegradient.errors import InvalidArgument
from fakegradient.evaluation.config import EvaluationConfig
from fakegradient.evaluation.pipeline import Normalized
from fakegradient.evaluation.plan import Shard
from fakegradient.evaluation.stages.naive import attack_batch
from fakegradient.evaluation.workbench import deepfool

# -- options and the attack space --------------------------------------------------------------------------

def test_config_options():
    assert EvaluationConfig().bias == "paper" and EvaluationConfig().space == "pixel"
    for bad in (dict(bias="released"), dict(space="logits"), dict(space="normalized", clip=True)):
        with pytest.raises(InvalidArgument):
            EvaluationConfig(**bad)
    assert EvaluationConfig.from_dict(EvaluationConfig(bias="official", space="normalized").to_dict()).space == \
        "normalized"


def test_cli_has_the_options():
    from fakegradient.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--bias", "official", "--space", "normalized"])
    assert (args.bias, args.space) == ("official", "normalized")


def test_attack_space_and_both_rhos(tiny, tiny_input):
    """Normalised-space DeepFool is DeepFool on (x - μ)/σ: its pixel perturbation is σ·r_z, and both ρ
    are recorded; with μ = 0, σ = 1 the two spaces coincide."""
    samples = [Sample(Path(f"{i}.png"), None) for i in range(len(tiny_input))]
    shard, attack = Shard("t", "original", 0, 4), deepfool(EvaluationConfig())
    identity = Normalized(tiny, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).eval()
    pixel, _ = attack_batch(shard, identity, identity, None, tiny_input, samples, attack, "pixel")
    same, _ = attack_batch(shard, identity, identity, None, tiny_input, samples, attack, "normalized")
    for a, b in zip(pixel, same):
        assert a.rho == pytest.approx(b.rho, rel=1e-4) and a.rho == pytest.approx(a.rho_normalized, rel=1e-5)
    scaled = Normalized(tiny, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)).eval()
    records, r = attack_batch(shard, scaled, scaled, None, tiny_input, samples, attack, "normalized")
    z = (tiny_input - scaled.mean) / scaled.std
    for i, rec in enumerate(records):
        assert rec.rho_normalized == pytest.approx(float((r[i] / scaled.std).norm() / z[i].norm()), rel=1e-5)
        assert rec.rho == pytest.approx(float(r[i].norm() / tiny_input[i].norm()), rel=1e-5)
        assert rec.attack_changed_served


def test_photos_data_counts_distinct_photos_once():
    from fakegradient.evaluation.config import load_samples

    samples = load_samples(EvaluationConfig(data="photos"))
    assert len(samples) == 29 and len({s.path.name for s in samples}) == 29
    assert [s.label is None for s in samples] == [False] * 20 + [True] * 9
    assert len({s.path.read_bytes() for s in samples}) == 29  # no two files are copies
    assert len(load_samples(EvaluationConfig(data="photos", limit=21))) == 21
