"""Our schema (cn_search): ordered SQL migrations applied once under an advisory lock."""
