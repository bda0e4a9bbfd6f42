"""What tests share, one module a subject; test modules import from here, never from each other.

- servers: the repository's paths, the session's PostgreSQL/Meilisearch (`Servers`), ports and databases
- processes: child processes (the CLI, `python -m dagster`), polling with a deadline, killing a group
- writes: the product's writes (new posts, edits, deletes, topic removals), write modes, seeded corpora
- backfill: the exact-copy oracle (`expected` / `actual`), week windows, a whole backfill in-process
- cutover: cutover/rollback jobs and gate checks run in-process on a test instance, shadow traffic
- ui: `search-migration dev` as a process group and the Dagster UI's GraphQL
- invariants: the migration's invariant, checked exhaustively
"""
