"""The Dagster layer: thin wiring from assets, checks, jobs and sensors to the engine.

Dagster flags some parameters this layer uses (owners, backfill policies) as beta or preview; those
notices are for Dagster's developers, not for an operator's screen, so only they are silenced.
"""

import warnings

import dagster as dg

for _category in (dg.BetaWarning, dg.PreviewWarning):
    warnings.filterwarnings("ignore", category=_category)
