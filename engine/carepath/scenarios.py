"""Golden scenarios: a full case plus the recommendations that must (not) appear in its decision.

A scenario file (``tests/scenarios/<pathway>/*.yaml``) holds ``description``, ``citation``, ``case``
and ``expect: {present: [...], absent: [...]}``. Dates in the case may be written relative to its
own ``as_of`` (``days_ago`` on an observation, ``since_days_ago`` on a medication), so scenarios
never go stale; :func:`load_scenario` turns them into ISO dates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

Pattern = dict[str, Any]


class ScenarioError(ValueError):
    """A scenario file that does not have the expected shape."""


@dataclass(frozen=True)
class Scenario:
    path: Path
    name: str
    pathway: str
    description: str
    citation: str
    case: dict[str, Any]
    present: list[Pattern] = field(default_factory=list)
    absent: list[Pattern] = field(default_factory=list)


def _as_date(value: Any, where: str) -> date:
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ScenarioError(f"{where}: expected an ISO date, found {value!r}")


def _relative(items: Any, key: str, target: str, as_of: date, where: str) -> list[Any]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise ScenarioError(f"{where}: expected a list")
    out: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and key in item:
            item = dict(item)
            n = item.pop(key)
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ScenarioError(f"{where}[{i}].{key}: expected a whole number of days >= 0")
            item[target] = (as_of - timedelta(days=n)).isoformat()
        out.append(item)
    return out


def _plain_dates(value: Any) -> Any:
    """YAML reads unquoted dates as ``date`` objects; the case contract wants ISO strings."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain_dates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_dates(v) for v in value]
    return value


def _patterns(raw: Any, where: str) -> list[Pattern]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(p, dict) and p for p in raw):
        raise ScenarioError(f"{where}: expected a list of non-empty mappings")
    return [dict(p) for p in raw]


def load_scenario(path: Path | str) -> Scenario:
    """Read one scenario file; relative dates become ISO dates measured from the case's ``as_of``."""
    p = Path(path)
    with p.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ScenarioError(f"{p}: a scenario is a mapping")
    unknown = set(data) - {"description", "citation", "case", "expect"}
    if unknown:
        raise ScenarioError(f"{p}: unknown keys {sorted(unknown)}")
    case = data.get("case")
    if not isinstance(case, dict) or "as_of" not in case:
        raise ScenarioError(f"{p}: 'case' must be a mapping with an 'as_of' date")
    case = dict(case)
    as_of = _as_date(case["as_of"], f"{p}: case.as_of")
    case["observations"] = _relative(case.get("observations"), "days_ago", "date", as_of, f"{p}: case.observations")
    case["medications"] = _relative(case.get("medications"), "since_days_ago", "since", as_of, f"{p}: case.medications")
    expect = data.get("expect") or {}
    if not isinstance(expect, dict):
        raise ScenarioError(f"{p}: 'expect' must be a mapping")
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise ScenarioError(f"{p}: 'description' is required")
    return Scenario(
        path=p,
        name=p.stem,
        pathway=p.parent.name,
        description=description.strip(),
        citation=str(data.get("citation") or ""),
        case=_plain_dates(case),
        present=_patterns(expect.get("present"), f"{p}: expect.present"),
        absent=_patterns(expect.get("absent"), f"{p}: expect.absent"),
    )


def iter_scenarios(root: Path | str) -> list[Scenario]:
    """Every scenario under ``root`` (``<root>/<pathway>/*.yaml``), sorted by path."""
    base = Path(root)
    files = sorted(f for f in base.rglob("*.y*ml") if f.suffix in (".yaml", ".yml"))
    return [load_scenario(f) for f in files]


def match(pattern: Pattern, rec: dict[str, Any]) -> bool:
    """Whether a recommendation has every key of ``pattern`` with an equal value.

    ``atc`` matches by prefix (the pattern's ``C09`` matches a recommendation's ``C09AA``);
    ``rule`` matches the recommendation's ``rule`` or any rule merged into it (``rules``).
    """
    for key, want in pattern.items():
        if key == "atc":
            got = rec.get("atc")
            if not isinstance(got, str) or not got.startswith(str(want)):
                return False
        elif key == "rule":
            rules = rec.get("rules") or []
            if rec.get("rule") != want and want not in rules:
                return False
        elif rec.get(key) != want:
            return False
    return True


def _show(pattern: Pattern) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in pattern.items()) + "}"


def _summary(rec: dict[str, Any]) -> str:
    keys = ("kind", "action", "atc", "direction", "urgency", "code", "days", "severity")
    return _show({k: rec[k] for k in keys if k in rec} | {"rule": rec.get("rule")})


def check(scenario: Scenario, decision: Mapping[str, Any]) -> list[str]:
    """Failure messages (empty when the decision meets every expectation)."""
    recs: list[dict[str, Any]] = list(decision.get("recommendations") or [])
    failures: list[str] = []
    for pat in scenario.present:
        if not any(match(pat, r) for r in recs):
            failures.append(f"missing {_show(pat)}; got: " + ("; ".join(_summary(r) for r in recs) or "nothing"))
    for pat in scenario.absent:
        hits = [r for r in recs if match(pat, r)]
        if hits:
            failures.append(f"unexpected {_show(pat)}: " + "; ".join(_summary(r) for r in hits))
    return failures


def fired_rules(decision: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(pathway, rule) for every rule that fired, from the decision's trace."""
    return {(str(t["pathway"]), str(t["rule"])) for t in decision.get("trace") or []}
