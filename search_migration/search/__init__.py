"""Search: text normalization, PostgreSQL search ranked like Meilisearch, the legacy engine's queries, the read router."""
