"""The demo's selection evidence: what validation selection changed on test, over every run."""

from __future__ import annotations

import pytest

from visionloom.demo.run import selection_evidence, selection_line


def _run(selected_step, last_step, val, test, last_val, last_test):
    return {
        "selected_step": selected_step,
        "last_step": last_step,
        "val_R1": val,
        "R1": test,
        "last_val_R1": last_val,
        "last_test_R1": last_test,
    }


def _comparison(*runs):
    return {"entries": {"phase3": {"per_seed": list(runs)}}}


def test_evidence_averages_both_choices_over_runs():
    evidence = selection_evidence(
        _comparison(
            _run(100, 150, val=40.0, test=20.0, last_val=38.0, last_test=22.0),  # chose earlier
            _run(150, 150, val=30.0, test=25.0, last_val=30.0, last_test=25.0),
        )
    )
    assert evidence["runs"] == 2 and evidence["earlier_step_selected"] == 1
    assert evidence["test_R1_selected"] == pytest.approx(22.5)
    assert evidence["test_R1_last"] == pytest.approx(23.5)
    assert evidence["gap_selected"] == pytest.approx((20.0 + 5.0) / 2)
    assert evidence["gap_last"] == pytest.approx((16.0 + 5.0) / 2)
    line = selection_line(evidence)
    assert "earlier step than the last in 1 of 2 runs" in line
    assert "the last weights' validation is the closer estimate" in line


def test_runs_without_the_last_weights_tested_give_no_evidence():
    run = _run(100, 150, 40.0, 20.0, None, None)
    assert selection_evidence(_comparison(run)) is None
    assert selection_evidence(None) is None


def test_validation_that_chose_the_last_step_everywhere_claims_no_winner():
    evidence = selection_evidence(_comparison(_run(150, 150, 35.0, 20.0, 35.0, 20.0)))
    line = selection_line(evidence)
    assert "chose the last step in all 1 runs" in line and "closer" not in line


def test_equal_gaps_name_neither_choice():
    evidence = selection_evidence(
        _comparison(
            _run(100, 150, val=30.0, test=20.0, last_val=32.0, last_test=22.0),
        )
    )
    assert "(neither is the closer estimate)" in selection_line(evidence)
