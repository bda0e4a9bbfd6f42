"""Local tooling, not for deployments: embedded PostgreSQL and Meilisearch, the demo corpus, seed and run."""
