"""studies.kit: rates as "k/n = p % [lo–hi]", CSV and markdown tables, per_image.csv read back, the entry frame."""

import math
from dataclasses import replace

import pytest
from helpers import image_record as record

from fakegradient.errors import FakeGradientError
from studies.kit import (
    aggregate_rate,
    command_line,
    int_list,
    markdown_table,
    parse_bool,
    rate_text,
    read_csv,
    records_from_csv,
    run_study,
    write_csv,
    write_records_csv,
)


def test_rate_text_carries_k_n_and_the_wilson_interval():
    assert rate_text(20, 20) == "20/20 = 100 % [84–100]"
    assert rate_text(0, 20) == "0/20 = 0 % [0–16]"
    assert rate_text(332, 500) == "332/500 = 66 % [62–70]"


def test_aggregate_rate_is_a_dash_without_images():
    assert aggregate_rate({"defense_success_pct_k": 15, "defense_success_pct_n": 20}, "defense_success_pct") == \
        "15/20 = 75 % [53–89]"
    assert aggregate_rate({"defense_success_pct_k": 0, "defense_success_pct_n": 0}, "defense_success_pct") == "—"


def test_markdown_table_lines_and_ragged_rows():
    assert markdown_table(["a", "b"], [[1, "x"], [2.5, "—"]]) == ["| a | b |", "|---|---|", "| 1 | x |",
                                                                     "| 2.5 | — |"]
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table(["a", "b"], [[1]])


def test_csv_round_trip_with_types_and_clear_errors(tmp_path):
    rows = [{"model": "m, with a comma", "cos": 0.1 + 0.2, "won": True}, {"model": "n", "cos": -1e-300, "won": False}]
    write_csv(tmp_path / "rows.csv", rows)
    assert read_csv(tmp_path / "rows.csv", {"model": str, "cos": float, "won": parse_bool}) == rows  # repr round trip
    with pytest.raises(FakeGradientError, match="cannot read"):
        read_csv(tmp_path / "rows.csv", {"absent": str})
    with pytest.raises(FakeGradientError, match="cannot read"):
        read_csv(tmp_path / "absent.csv", {"model": str})
    with pytest.raises(FakeGradientError, match="nothing to write"):
        write_csv(tmp_path / "empty.csv", [])


def test_int_list_and_command_line():
    assert int_list("10,100", "--ks") == [10, 100]
    with pytest.raises(FakeGradientError, match="--ks: expected comma-separated integers"):
        int_list("10,x", "--ks")
    assert command_line("studies.x", ["--out", "a b"]) == "python -m studies.x --out 'a b'"


def test_run_study_prints_the_report_or_one_error_line(capsys, tmp_path):
    assert run_study(lambda: tmp_path / "report.md") == 0
    assert capsys.readouterr().out == f"report: {tmp_path / 'report.md'}\n"

    def bad():
        raise FakeGradientError("--eval must be in 1..1000")

    assert run_study(bad) == 2
    assert capsys.readouterr().err == "error: --eval must be in 1..1000\n"


# -- per_image.csv round trip ------------------------------------------------------------------------------

def test_records_survive_the_csv_round_trip_with_the_l2_ratio_column(tmp_path):
    records = [record(method="original", image="a", l2=2.0), record(image="a", l2=1.0, plain=11),
               replace(record(image="b"), label=None)]
    path = tmp_path / "per_image.csv"
    write_records_csv(path, records)
    back = records_from_csv(path)
    assert [(r.method, r.image, r.label, r.plain_top1, r.served_top1_fake) for r in back] == \
           [(r.method, r.image, r.label, r.plain_top1, r.served_top1_fake) for r in records]
    assert all(math.isclose(a.l2, b.l2, rel_tol=1e-12) for a, b in zip(back, records))
    header, *rows = path.read_text().splitlines()
    ratios = [row.split(",")[-1] for row in rows]
    assert header.endswith("functionality,defense_success,l2_ratio_to_original")
    assert ratios[0] == "nan" and math.isclose(float(ratios[1]), 0.5) and ratios[2] == "nan"  # b: no original


def test_records_from_a_broken_csv_is_a_clear_error(tmp_path):
    path = tmp_path / "per_image.csv"
    path.write_text("model,method\nm,original\n")
    with pytest.raises(FakeGradientError, match="cannot read records"):
        records_from_csv(path)
    with pytest.raises(FakeGradientError):
        records_from_csv(tmp_path / "absent.csv")
