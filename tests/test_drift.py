"""The validation figures: ties within an int8 output step, and references that ignore their input."""

from __future__ import annotations

import numpy as np

from edgehybrid.drift import MIN_SPREAD, Tolerance, compare, points_change, signed, top1_text

TOL = Tolerance(atol=1e-3, rtol=0.5, min_cosine=0.98, min_top1_agreement=0.75)


def test_a_class_within_one_output_step_of_the_top_counts_as_agreeing():
    ref = np.array([[1.00, 0.99, 0.0], [0.0, 2.0, 1.0]])
    act = np.array([[0.99, 1.00, 0.0], [0.0, 2.0, 1.0]])  # first sample: the near-tie flipped
    assert compare(ref, act).top1_agreement == 0.5
    assert compare(ref, act, tie=0.02).top1_agreement == 1.0
    assert compare(ref, act, tie=0.001).top1_agreement == 0.5


def test_top1_is_not_assessed_when_the_reference_ignores_its_input():
    rng = np.random.default_rng(0)
    constant = np.tile(rng.normal(size=(1, 50)), (8, 1)) + rng.normal(scale=1e-5, size=(8, 50))
    flipped = constant.copy()
    top = constant.argmax(1)
    second = np.argsort(constant, 1)[:, -2]
    flipped[np.arange(8), second] = constant[np.arange(8), top] + 1e-3  # every sample picks the runner-up
    c = compare(constant, flipped)
    assert c.top1_agreement == 0.0 and c.reference_spread < MIN_SPREAD and not c.top1_informative
    assert TOL.failures(c, float(np.abs(constant).max())) == []
    assert "not assessed" in top1_text(c.to_dict())

    # the same flips on a reference whose logits follow the input fail, naming the threshold
    varying = constant + rng.normal(scale=0.5, size=constant.shape)
    flipped = varying.copy()
    flipped[np.arange(8), np.argsort(varying, 1)[:, -2]] = varying.max(1) + 1e-3
    c = compare(varying, flipped)
    assert c.top1_informative and c.top1_agreement == 0.0
    assert TOL.failures(c, float(np.abs(varying).max())) == ["top-1 agreement 0.0% < 75%"]
    assert top1_text(c.to_dict()) == "top-1 agreement 0%"


def test_a_constant_reference_still_fails_on_cosine_and_max_abs():
    ref = np.tile(np.linspace(-1, 1, 20), (4, 1))
    wrong = -ref  # a sign error: top-1 is not assessed, but the other figures catch it
    c = compare(ref, wrong)
    assert not c.top1_informative
    failures = TOL.failures(c, 1.0)
    assert any(f.startswith("cosine") for f in failures) and any(f.startswith("max-abs") for f in failures)


def test_accuracy_changes_read_one_way_in_words():
    assert points_change(2.0) == "lost 2.0 pts" and points_change(-0.2) == "gained 0.2 pts"
    assert points_change(-0.004, 2) == "no change" == points_change(0.04)  # never "-0.0"
    assert signed(-0.001) == "0.00" and signed(1.234) == "+1.23" and signed(-0.5) == "-0.50"
