"""search_migration: move a live product's search from Meilisearch to PostgreSQL with zero downtime."""
