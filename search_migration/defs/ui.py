"""What the Dagster UI shows beside every definition: owners, tags and a link to its runbook section.

One place for the runbook's address, so every link moves together when the README is hosted elsewhere
(SEARCH_MIGRATION_RUNBOOK_URL, e.g. the repository's README page); by default, this checkout's README.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import dagster as dg

OWNERS = ["team:search-migration"]
RUNBOOK_URL = os.environ.get("SEARCH_MIGRATION_RUNBOOK_URL") or (Path(__file__).resolve().parents[2]
                                                                   / "README.md").as_uri()


def runbook_url(anchor: str) -> str:
    """The runbook section `anchor` (an explicit `<a id>` in README.md; test_defs checks it exists)."""
    return f"{RUNBOOK_URL}#{anchor}"


def runbook(anchor: str, **extra) -> dict:
    """Definition metadata: the runbook link (clickable in the UI) plus anything else to show."""
    return {"runbook": dg.MetadataValue.url(runbook_url(anchor)), **extra}


def tags(stage: str, domain: str) -> dict[str, str]:
    """`stage`: the migration stage it serves; `domain`: which part of the migration it belongs to."""
    return {"stage": stage, "domain": domain}


def number(value: Optional[float]):
    """A float the UI can plot over time; None stays null (a missing point, not a string)."""
    return dg.MetadataValue.null() if value is None else dg.MetadataValue.float(float(value))
