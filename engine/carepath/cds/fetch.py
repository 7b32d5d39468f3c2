"""Fetch what a CDS Hooks prefetch lacks from the EHR's FHIR server (httpx), under one deadline.

A prefetch key that is absent was not fetched by the EHR; a key whose value is null means there are no
such data, and is never fetched again. Searches are followed page by page (Bundle.link "next", only on
the same server: the access token is never sent elsewhere), at most MAX_PAGES pages of a search.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from carepath.cds.request import FhirAuth

MAX_PAGES = 20
MAX_RESPONSE = 16 * 1024 * 1024


class FetchError(Exception):
    """A prefetch key could not be fetched: the service answers 412."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"prefetch.{key}: {message}")
        self.key = key
        self.message = message


def fill(template: str, patient_id: str) -> str:
    return template.replace("{{context.patientId}}", patient_id)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


async def _get(client: httpx.AsyncClient, url: str, auth: FhirAuth, key: str) -> Any:
    try:
        r = await client.get(url, headers={"Authorization": f"Bearer {auth.access_token}", "Accept": "application/fhir+json"})
    except httpx.HTTPError as exc:
        raise FetchError(key, f"the FHIR server could not be reached ({type(exc).__name__})") from None
    if r.status_code == 404:
        return None
    if r.status_code != 200:
        raise FetchError(key, f"the FHIR server answered {r.status_code}")
    if len(r.content) > MAX_RESPONSE:
        raise FetchError(key, "the FHIR server's answer is too large")
    try:
        data = orjson.loads(r.content)
    except orjson.JSONDecodeError:
        raise FetchError(key, "the FHIR server's answer is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise FetchError(key, "the FHIR server's answer is not a FHIR resource")
    return data


async def fetch_one(client: httpx.AsyncClient, base: str, query: str, auth: FhirAuth, key: str) -> Any:
    """One prefetch template's data: a resource, a searchset Bundle of every page, or None (not found)."""
    url = base.rstrip("/") + "/" + query
    data = await _get(client, url, auth, key)
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        return data
    entries = list(data.get("entry") or [])
    pages = 1
    while True:
        nxt = next((link.get("url") for link in data.get("link") or [] if isinstance(link, dict) and link.get("relation") == "next"), None)
        if not isinstance(nxt, str) or not nxt:
            break
        if _origin(nxt) != _origin(base):
            raise FetchError(key, "the next page is on another server: not followed (the access token stays with the EHR's server)")
        pages += 1
        if pages > MAX_PAGES:
            raise FetchError(key, f"more than {MAX_PAGES} pages")
        data = await _get(client, nxt, auth, key)
        if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
            raise FetchError(key, "a next page is not a Bundle")
        entries += data.get("entry") or []
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


async def complete(
    client: httpx.AsyncClient,
    prefetch: dict[str, Any],
    templates: dict[str, str],
    patient_id: str,
    base: str,
    auth: FhirAuth,
    deadline: float,
) -> dict[str, Any]:
    """``prefetch`` with every template key it lacks fetched (concurrently), within ``deadline`` seconds."""
    missing = [k for k in templates if k not in prefetch]
    if not missing:
        return prefetch
    try:
        async with asyncio.timeout(deadline):
            got = await asyncio.gather(*(fetch_one(client, base, fill(templates[k], patient_id), auth, k) for k in missing))
    except TimeoutError:
        raise FetchError(missing[0] if len(missing) == 1 else ",".join(missing), f"not fetched within {deadline:g} s") from None
    return {**prefetch, **dict(zip(missing, got, strict=True))}
