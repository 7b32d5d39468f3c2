"""Every rule of the bundled pathways fires (else: a generator gap or a dead rule), within the dev
profile's budget: 200 examples a pathway, then a steered search into each rule the main search did
not fire. (`carepath check --profile ci --strict-coverage` asks the same with five times the budget;
the dev profile took 79 s here where the CI one took 118-125 s, and fired every rule too.)

Its own module (pytest-xdist's loadscope gives a module to one worker): this search and
test_invariants.py's run side by side rather than one after the other.
"""

from __future__ import annotations

from carepath.testing.plugin import Pathways
from carepath.testing.runner import check_engine


def test_every_rule_fires(pathways: Pathways) -> None:
    report = check_engine(pathways.engine, profile="dev", database=False, yaml_searches=False, only=["differential", "one_referral"])
    assert report.ok, report.format(coverage=False)
    assert not report.never_fired(), report.format()
