"""The one back-off rule every strategy uses when drafting stops paying: a drafted pass in
every `every`, and a pass that pays ends the plain stretch."""
import pytest

from specdec.speculate.backoff import Backoff, BackoffPerKey
from specdec.speculate.gate import DraftGate


def test_one_drafted_pass_in_every_n_while_drafting_does_not_pay():
    backoff = Backoff(every=4)
    assert [backoff.draft(False) for _ in range(8)] == [False, False, False, True] * 2
    assert backoff.draft(True)  # paying again: drafting resumes at once...
    assert [backoff.draft(False) for _ in range(4)] == [False, False, False, True]  # ...and the count restarts


def test_keys_back_off_apart_and_bad_periods_are_clear_errors():
    per_order = BackoffPerKey(every=2)
    assert [per_order.draft(1, False) for _ in range(4)] == [False, True, False, True]
    assert per_order.draft(4, False) is False  # order 4 has its own count
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="recheck_every must be a positive integer"):
            Backoff(bad)


def test_the_gate_stops_drafting_when_plain_is_faster_and_looks_again():
    gate = DraftGate(recheck_every=3)
    assert gate.should_draft()
    gate.observe(tokens=2, seconds=1.0, plain_seconds=0.1)  # 2 tok/s against plain's 10
    assert [gate.should_draft() for _ in range(3)] == [False, False, True]
    gate.observe(tokens=4, seconds=0.2, plain_seconds=0.1)  # the recheck: 20 tok/s, EMA 7.4 < 10
    assert not gate.should_draft()
    gate.observe(tokens=4, seconds=0.2, plain_seconds=0.1)  # once more: EMA 11.2, drafting pays
    assert [gate.should_draft() for _ in range(3)] == [True, True, True]


def test_a_verdict_against_drafting_on_a_guessed_plain_price_buys_one_measuring_pass():
    """Before a pass of about one token is measured, plain's price is an extrapolation (at
    seed-13b it put a plain pass at a tenth of its time and shut the gate for seven passes):
    one plain pass measures it, and the next drafted pass decides on the measurement."""
    gate = DraftGate(recheck_every=8)
    gate.observe(tokens=2, seconds=2.6, plain_seconds=0.2, plain_measured=False)
    assert [gate.should_draft() for _ in range(2)] == [False, True]  # one pass, not a stretch
    gate.observe(tokens=2, seconds=2.6, plain_seconds=2.35)  # measured: 0.77 tok/s vs 0.43
    assert all(gate.should_draft() for _ in range(8))
    gate.observe(tokens=1, seconds=3.0, plain_seconds=0.5)  # measured, and plain is faster
    assert [gate.should_draft() for _ in range(8)] == [False] * 7 + [True]  # the stretch
    unsure = DraftGate(recheck_every=8)
    unsure.observe(tokens=3, seconds=1.0, plain_seconds=0.9, plain_measured=False)  # pays anyway
    assert all(unsure.should_draft() for _ in range(8))
