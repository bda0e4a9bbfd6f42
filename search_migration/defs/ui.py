"""What the Dagster UI shows beside every definition: owners, tags and a link to its runbook section.

One place for the runbook's address, so every link moves together: SEARCH_MIGRATION_RUNBOOK_URL (e.g.
your own copy of the README, or an internal docs page that keeps its anchors), by default the README on
the project's repository host. Never a path on disk: an installed package has no README beside it.
"""

from __future__ import annotations

import os
from typing import Optional

import dagster as dg

OWNERS = ["team:search-migration"]
DEFAULT_RUNBOOK_URL = "https://github.com/kukuri-app/search_migration/blob/main/README.md"
RUNBOOK_URL = (os.environ.get("SEARCH_MIGRATION_RUNBOOK_URL") or DEFAULT_RUNBOOK_URL).rstrip("#")


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
