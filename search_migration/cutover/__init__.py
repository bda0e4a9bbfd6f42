"""Runtime flags, the stages they spell, and the audited moves between stages (cutover and rollback)."""
