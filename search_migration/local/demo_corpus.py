"""A deterministic synthetic corpus shaped like the product's: Japanese-first, mixed with English.

Same (seed, posts, topics) → the same posts, ids, timestamps, topics and deletions, batch by batch,
so a seed that stopped half-way can resume from the first uncommitted batch.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Iterator

BATCH_POSTS = 5_000
EPOCH = 1_767_571_200  # 2026-01-05T00:00:00Z
SPAN_SECONDS = 270 * 24 * 3600  # posts spread over ~9 months
DELETE_RATE = 0.02
TOPIC_REMOVAL_RATE = 0.01
NOTE_KIND = 1

JA_PHRASES = [
    "今日はいい天気ですね", "ラーメン食べたい", "東京で勉強会があります", "新しいカメラを買った",
    "コーヒーが好きです", "週末は山登りに行く", "プログラミングが楽しい", "猫がかわいい",
    "渋谷駅の近くで集合", "桜が咲きました", "新バージョンをリリースしました", "ありがとうございます",
    "検索が遅い問題を調査中", "データベースの移行", "京都の紅葉がきれい", "朝ごはんはパン",
    "がぎぐげご", "ぱぴぷぺぽ", "映画を観に行った", "電車が遅れている", "大阪でたこ焼き",
    "日本語の全文検索", "今夜はライブ配信します", "北海道の雪まつり", "温泉に行きたい",
    "写真を撮りました", "音楽フェスに参加", "読書の秋", "新しいリレーを立てた", "分散型SNS",
]
JA_WORDS = [
    "東京", "大阪", "京都", "検索", "移行", "写真", "音楽", "映画", "ラーメン", "寿司", "カメラ",
    "コーヒー", "猫", "犬", "桜", "紅葉", "雪", "温泉", "旅行", "勉強会", "開発", "リリース",
    "データ", "サーバー", "ノード", "トピック", "投稿", "日本語", "全文", "ライブ",
]
HALF_WIDTH = ["ｶﾒﾗ", "ﾗｰﾒﾝ", "ｺｰﾋｰ", "ﾃｽﾄ", "ｻｰﾊﾞｰ", "ﾃﾞｰﾀ"]
FULL_WIDTH = ["Ｐｙｔｈｏｎ", "ＲＵＳＴ", "２０２６", "ＮＯＳＴＲ", "ＡＰＩ", "ｄａｇｓｔｅｒ"]
EN_WORDS = [
    "rust", "python", "release", "meetup", "coffee", "camera", "nostr", "relay", "search",
    "postgres", "meilisearch", "dagster", "migration", "tokyo", "osaka", "photo", "music", "travel",
    "ramen", "sushi", "node", "topic", "index", "query", "latency", "backfill", "cutover", "shadow",
    "weekend", "sunset", "morning", "update", "bug", "fix", "deploy", "server", "client", "app",
]
EN_PHRASES = [
    "good morning", "just shipped a new release", "looking for a coffee shop", "the relay is fast today",
    "search is finally working", "weekend trip to kyoto", "reading about postgres full text search",
    "new photo from the hike", "anyone going to the meetup", "debugging the indexer",
]
ACCENTED = ["café", "naïve", "Pokémon", "résumé", "Zürich", "jalapeño"]
HASHTAGS = ["#nostr", "#ラーメン", "#photo", "#dagster", "#東京", "#rust", "#カメラ", "#音楽", "#travel"]
MENTIONS = ["@alice", "@bob", "@さくら", "@taro", "@hanako", "@dev_team"]
EMOJI = ["🍜", "☕", "🎉", "📷", "🌸", "🔥", "👍", "🗼", "😂", "✨"]
TOPIC_SLUGS = [
    "ramen", "tech", "photo", "travel", "music", "anime", "cafe", "nostr", "books", "games",
    "tokyo", "osaka", "cats", "dev", "food", "outdoor", "art", "news", "movies", "sports",
]


@dataclass
class Post:
    index: int
    event_id: str
    pubkey: str
    content: str
    created_at: int
    topics: list[str]
    tags: list[list[str]]


@dataclass
class Batch:
    number: int
    posts: list[Post]
    deletions: list[Post] = field(default_factory=list)  # whole-post deletes, one outbox row per topic
    topic_removals: list[tuple[Post, str]] = field(default_factory=list)  # one topic dropped


def topic_ids(count: int) -> list[str]:
    return [f"t{i:04d}-{TOPIC_SLUGS[i % len(TOPIC_SLUGS)]}" for i in range(count)]


def _hex_id(seed: int, kind: str, n: int) -> str:
    return hashlib.sha256(f"search_migration-demo:{seed}:{kind}:{n}".encode()).hexdigest()


def _content(rng: random.Random) -> str:
    parts: list[str] = []
    for _ in range(rng.choices((1, 2, 3, 4), weights=(3, 4, 2, 1))[0]):
        pick = rng.random()
        if pick < 0.32:
            parts.append(rng.choice(JA_PHRASES))
        elif pick < 0.50:
            parts.append(rng.choice(JA_WORDS) + rng.choice(["", "の", "で", "が", "を"]) + rng.choice(JA_WORDS))
        elif pick < 0.72:
            parts.append(" ".join(rng.choices(EN_WORDS, k=rng.randint(1, 4))))
        elif pick < 0.80:
            parts.append(rng.choice(EN_PHRASES))
        elif pick < 0.85:
            parts.append(rng.choice(HALF_WIDTH))
        elif pick < 0.90:
            parts.append(rng.choice(FULL_WIDTH))
        else:
            parts.append(rng.choice(ACCENTED))
    if rng.random() < 0.35:
        parts.append(rng.choice(HASHTAGS))
    if rng.random() < 0.15:
        parts.insert(0, rng.choice(MENTIONS))
    if rng.random() < 0.25:
        parts.append(rng.choice(EMOJI))
    sep = rng.choice([" ", " ", "、", "。", ""])
    return sep.join(parts)


def generate(posts: int, topics: int, seed: int = 42) -> Iterator[Batch]:
    """Yield the corpus in fixed-size batches; batch k is the same for the same arguments."""
    if posts < 0 or topics < 1:
        raise ValueError("posts must be >= 0 and topics >= 1")
    rng = random.Random(seed)
    tids = topic_ids(topics)
    # Zipf-like popularity: a few busy topics, a long tail.
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(topics)]
    authors = [_hex_id(seed, "author", a) for a in range(max(1, posts // 20))]
    pending_deletes: dict[int, list[Post]] = {}
    pending_removals: dict[int, list[tuple[Post, str]]] = {}
    for number, start in enumerate(range(0, posts, BATCH_POSTS)):
        batch = Batch(number=number, posts=[])
        for i in range(start, min(start + BATCH_POSTS, posts)):
            fan_out = min(topics, rng.choices((1, 2, 3), weights=(70, 22, 8))[0])
            chosen: list[str] = []
            while len(chosen) < fan_out:
                t = rng.choices(tids, weights=weights)[0]
                if t not in chosen:
                    chosen.append(t)
            created = EPOCH + (i * SPAN_SECONDS) // max(posts, 1) + rng.randint(0, 3600)
            content = _content(rng)
            tags = [["t", t] for t in chosen] + [["client", "search_migration-demo"]]
            post = Post(i, _hex_id(seed, "event", i), rng.choice(authors), content, created, chosen, tags)
            batch.posts.append(post)
            roll = rng.random()
            if roll < DELETE_RATE:
                pending_deletes.setdefault(min(posts - 1, i + rng.randint(1, 5_000)), []).append(post)
            elif roll < DELETE_RATE + TOPIC_REMOVAL_RATE and len(chosen) > 1:
                later = min(posts - 1, i + rng.randint(1, 5_000))
                pending_removals.setdefault(later, []).append((post, chosen[-1]))
            batch.deletions.extend(pending_deletes.pop(i, []))
            batch.topic_removals.extend(pending_removals.pop(i, []))
        yield batch


def expected_live_rows_per_topic(posts: int, topics: int, seed: int = 42) -> dict[str, int]:
    """Live (post, topic) rows per topic, computed from the generator alone (for tests)."""
    counts: dict[str, int] = {}
    deleted: set[int] = set()
    removed: set[tuple[int, str]] = set()
    all_posts: list[Post] = []
    for batch in generate(posts, topics, seed):
        all_posts.extend(batch.posts)
        deleted.update(p.index for p in batch.deletions)
        removed.update((p.index, t) for p, t in batch.topic_removals)
    for p in all_posts:
        if p.index in deleted:
            continue
        for t in p.topics:
            if (p.index, t) not in removed:
                counts[t] = counts.get(t, 0) + 1
    return counts


def live_traffic(topics: list[str], seed: int) -> Iterator[Post]:
    """Endless new posts for a demo writer: same text model, new ids, created now-ish."""
    import time

    rng = random.Random(seed)
    n = 0
    while True:
        chosen = rng.sample(topics, k=min(len(topics), rng.choices((1, 2), weights=(80, 20))[0]))
        yield Post(n, _hex_id(seed, "live", n), _hex_id(seed, "author", rng.randrange(100)), _content(rng),
                   int(time.time()), chosen, [["t", t] for t in chosen])
        n += 1
