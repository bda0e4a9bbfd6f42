"""Topic ids round-trip through partition keys; `|` and `,` never reach Dagster."""

import pytest

from search_migration.backfill.partition_keys import PartitionKeyError, topic_from_partition_key, topic_partition_key


@pytest.mark.parametrize("topic", ["t0001-ramen", "kukuri:tauri", "a|b", "x,y", "50% off", "東京/カフェ", "a b"])
def test_round_trip_and_no_separator_characters(topic):
    key = topic_partition_key(topic)
    assert "|" not in key and "," not in key and " " not in key and "/" not in key
    assert topic_from_partition_key(key) == topic


def test_plain_ids_stay_readable_and_bad_ids_are_refused():
    assert topic_partition_key("t0001-ramen") == "t0001-ramen"
    with pytest.raises(PartitionKeyError):
        topic_partition_key(" ")
    with pytest.raises(PartitionKeyError):
        topic_partition_key("x" * 300)
