"""The `topics` dynamic partitions: one key per product topic (see partition_keys for the encoding)."""

import dagster as dg

topics_partitions = dg.DynamicPartitionsDefinition(name="topics")
