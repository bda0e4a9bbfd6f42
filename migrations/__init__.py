"""The ordered SQL migrations, installed as the package `search_migration.migrations` (see pyproject.toml).

Only the `NNNN_snake_case.sql` files here are migrations; this file makes the folder a regular package
so `importlib.resources` hands back a plain directory, in a wheel and in an editable install alike.
"""
