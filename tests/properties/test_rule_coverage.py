"""Every rule of the bundled pathways fires under the CI profile (else: a generator gap or a dead rule).

Its own module (pytest-xdist's loadscope gives a module to one worker): this search and
test_invariants.py's run side by side rather than one after the other.
"""

from __future__ import annotations

from carepath.testing.plugin import Pathways
from carepath.testing.runner import check_engine


def test_ci_profile_fires_every_rule(pathways: Pathways) -> None:
    report = check_engine(pathways.engine, profile="ci", database=False, yaml_searches=False, only=["differential", "one_referral"])
    assert report.ok, report.format(coverage=False)
    assert not report.never_fired(), report.format()
