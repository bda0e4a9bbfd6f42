"""What the Dagster UI shows beside every definition: owners, tags and a link to its runbook section.

One place for the runbook's address, so every link moves together: SEARCH_MIGRATION_RUNBOOK_URL (your
copy of the README, or an internal docs page that keeps its anchors). Unset, a checkout links to its
own README; an installed package has no README beside it and no address it could know, so it names
the section as text and says which variable makes it a link.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import dagster as dg

OWNERS = ["team:search-migration"]
_CHECKOUT_README = Path(__file__).resolve().parents[2] / "README.md"


def _base() -> str | None:
    configured = os.environ.get("SEARCH_MIGRATION_RUNBOOK_URL")
    if configured:
        return configured.rstrip("#")
    if _CHECKOUT_README.is_file() and (_CHECKOUT_README.parent / "pyproject.toml").is_file():
        return _CHECKOUT_README.as_uri()
    return None


RUNBOOK_URL = _base()


def runbook_url(anchor: str) -> str | None:
    """The runbook section `anchor` (an explicit `<a id>` in README.md; test_defs checks it exists)."""
    return f"{RUNBOOK_URL}#{anchor}" if RUNBOOK_URL else None


def runbook(anchor: str, **extra) -> dict:
    """Definition metadata: the runbook link (clickable in the UI) plus anything else to show."""
    url = runbook_url(anchor)
    link = dg.MetadataValue.url(url) if url else dg.MetadataValue.text(
        f"README.md#{anchor} (set SEARCH_MIGRATION_RUNBOOK_URL to link it)")
    return {"runbook": link, **extra}


def tags(stage: str, domain: str) -> dict[str, str]:
    """`stage`: the migration stage it serves; `domain`: which part of the migration it belongs to."""
    return {"stage": stage, "domain": domain}


def number(value: Optional[float]):
    """A float the UI can plot over time; None stays null (a missing point, not a string)."""
    return dg.MetadataValue.null() if value is None else dg.MetadataValue.float(float(value))
