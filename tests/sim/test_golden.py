"""Simulator results unchanged by refactors: fingerprints equal the recorded ones."""
import json

from tests.sim.golden import GOLDEN_PATH, fingerprints


def test_result_tables_match_recorded_fingerprints():
    want = json.loads(GOLDEN_PATH.read_text())
    got = fingerprints()
    assert sorted(got) == sorted(want)
    changed = [k for k in want if got[k] != want[k]]
    assert not changed, (f"{len(changed)} of {len(want)} result tables changed, first "
                         f"{changed[:5]}; if intended, re-record with "
                         "`python -m tests.sim.golden --write` and say why in the commit")
