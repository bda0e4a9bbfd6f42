"""The demo corpus: signed events shaped like a kukuri community node's, deterministic by seed.

`corpus(posts, topics, seed, namespace)` yields `posts` events in publishing order, each with the
simulated clock the relay ingests it at, so that the product's writer (`product_writer`) stores them
exactly as cn-relay would. Same arguments → the same events, ids and clocks, so a seed stopped
half-way resumes at the first event not yet stored.

What the node sees (DESIGN.md "Adopting the product"): mostly kind 1 notes; replaceable profiles,
contact and relay lists (kinds 0, 3, 10002) in several versions, and now and then an older version
arriving late; addressable long-form articles (30023, `d` tag) revised in place; kind 5 deletions of
one's own notes (by `e`) and articles (by `a`); expiring notes (`exp`, sometimes `expiration`);
notes whose signed `created_at` is years in the past; notes in up to three `kukuri:` topics.
Japanese is written as Japanese is, without spaces between words, and mixed with English, half- and
full-width forms, hashtags, mentions and emoji.

The simulated history runs from `T_START` to `T_END` (2026-10-01, in the past on purpose: the clock
the relay ingested at never runs ahead of a real one). Notes either expire well inside the history,
or years after `T_END`, never in between: what is searchable at `T_END` stays searchable now.
A replaceable or addressable event keeps its topics across versions: the product's indexer leaves an
older version indexed in a topic its newer version dropped (a product defect, PRODUCT.md), and a
demo that reproduced it would show drift the migration is right to report but cannot fix.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from search_migration.local.product_writer import build_event

DAY = 86_400
T_END = 1_790_812_800  # 2026-10-01T00:00:00Z: the simulated "now" of the pre-migration world
T_START = T_END - 270 * DAY  # nine months of history
T_REINDEX = T_END - DAY  # an operator's full reindex of the product's indexer, the day before
EXPIRE_MARGIN = 3_600  # a note expiring inside the history expires at least this long before T_REINDEX
FAR_EXPIRY_YEARS = (5, 9)  # the others expire this many years after T_END
TAIL_MAX = 100  # events after the reindex, consumed by the product's indexer outbox row by outbox row
BATCH = 500  # events between two expiry sweeps of the relay

NOTE, PROFILE, CONTACTS, RELAYS, ARTICLE, DELETION, EXPIRING, BACKDATED, LATE_VERSION = (
    "note", "profile", "contacts", "relays", "article", "deletion", "expiring", "backdated", "late_version")

PLACES = ["東京", "大阪", "京都", "渋谷", "新宿", "札幌", "福岡", "横浜", "名古屋", "神戸", "鎌倉", "沖縄"]
THINGS = ["ラーメン", "寿司", "コーヒー", "カメラ", "写真", "音楽", "映画", "本", "ゲーム", "アニメ", "猫", "桜",
          "紅葉", "温泉", "天気", "カレー", "自転車", "登山", "プログラミング", "全文検索", "データベース", "ライブ配信"]
ADJ = ["美味しい", "新しい", "古い", "静かな", "有名な", "小さな", "素敵な", "懐かしい"]
EN_TECH = ["Rust", "Python", "PostgreSQL", "Meilisearch", "Dagster", "Nostr", "TypeScript", "Docker", "Linux",
           "Kubernetes", "SQLite", "WebSocket"]
EN_WORDS = ["release", "meetup", "coffee", "camera", "relay", "search", "migration", "photo", "music", "travel",
            "ramen", "sushi", "index", "query", "latency", "backfill", "weekend", "sunset", "morning", "update",
            "deploy", "server", "client", "library", "keyboard", "festival", "concert", "weather"]
EN_PLACES = ["Tokyo", "Osaka", "Kyoto", "Sapporo", "Fukuoka", "Yokohama"]
JA_TEMPLATES = [
    "{place}で{thing}を食べた", "今日は{place}の{thing}がすごくよかった", "{thing}について調べている",
    "{adj}{thing}を買ったので週末に試してみる", "{tech}の勉強会が{place}で開かれます", "{tech}で{thing}のアプリを作っている",
    "昨日の{thing}は最高だった", "{thing}が好きな人と話したい", "{place}駅の近くにある{adj}{thing}の店",
    "{tech}のリリースノートを読んだ", "{thing}と{thing2}どっちがいいと思う", "{place}は朝から雨が降っている",
    "{tech}で非同期処理を書くのが楽しい", "{thing}の写真を撮りに{place}まで行ってきた", "{adj}{thing}を見つけた",
    "{tech}から{tech2}への移行がやっと終わった", "{thing}を検索しても見つからない", "来週{place}で{thing}のイベントがある",
]
EN_TEMPLATES = [
    "just shipped a new {tech} release", "anyone know a good {word} place in {en_place}?",
    "reading about {tech} full text search", "weekend trip to {en_place}, so much {word}",
    "the {word} was great this {word2}", "debugging the {tech} indexer again", "{tech} or {tech2} for this?",
    "new {word} photos from {en_place}", "looking for a {word} meetup",
]
HASHTAGS = ["#nostr", "#ラーメン", "#photo", "#kukuri", "#東京", "#rust", "#カメラ", "#音楽", "#travel", "#コーヒー"]
MENTIONS = ["@alice", "@bob", "@さくら", "@taro", "@hanako", "@dev_team"]
EMOJI = ["🍜", "☕", "🎉", "📷", "🌸", "🔥", "👍", "🗼", "😂", "✨"]
HALF_WIDTH = ["ｶﾒﾗ", "ﾗｰﾒﾝ", "ｺｰﾋｰ", "ﾃｽﾄ", "ｻｰﾊﾞｰ", "ﾃﾞｰﾀ"]
FULL_WIDTH = ["Ｐｙｔｈｏｎ", "ＲＵＳＴ", "２０２６", "ＮＯＳＴＲ", "ＡＰＩ", "ｄａｇｓｔｅｒ"]
ACCENTED = ["café", "naïve", "Pokémon", "résumé", "Zürich", "jalapeño"]
NAMES = ["さくら", "たろう", "hanako", "kenji", "ゆい", "mika", "sora", "はると", "riku", "aoi"]
TOPIC_SLUGS = ["tokyo", "rust-lang", "ramen", "photo", "travel", "music", "anime", "Cafe-Ja", "nostr", "books",
               "games", "osaka", "cats", "dev", "food", "outdoor", "art", "news", "movies", "sports"]
DELETE_NOTES = ["", "間違えて投稿しました", "typo", "消します", "posted by mistake"]


@dataclass(frozen=True)
class Item:
    """One event to publish, the relay's clock when it arrives, and what it stands for."""

    n: int  # position in the corpus (0-based)
    event: dict
    now: int  # unix seconds the relay ingests it at
    role: str


def topic_ids(count: int, namespace: str = "") -> list[str]:
    """`count` distinct `kukuri:` topic ids; `namespace` (lowercase ASCII) lets demos share a Meilisearch."""
    ns = f"{namespace}-" if namespace else ""
    return [f"kukuri:{ns}{TOPIC_SLUGS[i % len(TOPIC_SLUGS)]}" + (f"-{i // len(TOPIC_SLUGS)}" if i >= len(TOPIC_SLUGS)
                                                                 else "") for i in range(count)]


def _hex(seed: int, kind: str, n: int) -> str:
    return hashlib.sha256(f"search_migration-demo:{seed}:{kind}:{n}".encode()).hexdigest()


def tail_size(posts: int) -> int:
    """Events published after the reindex (the product's indexer consumes those row by row)."""
    return min(TAIL_MAX, posts // 20)


@dataclass
class _Author:
    pubkey: str
    home: str  # replaceable events (profile, lists) go to this topic, every version
    notes: deque = field(default_factory=lambda: deque(maxlen=40))  # (event_id, topics) still deletable
    articles: dict = field(default_factory=dict)  # d → topics, of the articles not deleted
    articles_written: int = 0  # a deleted article's d is never reused
    versions: dict = field(default_factory=dict)  # kind → created_at of the newest version published


class Model:
    """Text and event model: a random stream plus what each author has published so far."""

    def __init__(self, seed: int, topics: list[str], authors: int, author_kind: str = "author"):
        self.rng = random.Random(seed)
        self.topics = topics
        self.weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(topics))]  # a few busy topics, a long tail
        self.authors = [_Author(_hex(seed, author_kind, a), self._topic()) for a in range(max(1, authors))]
        self.seen: set[str] = set()  # ids already produced (a repeat would be a dedupe no-op at the relay)

    # ---- text ----------------------------------------------------------------------------------

    def _topic(self) -> str:
        return self.rng.choices(self.topics, weights=self.weights)[0]

    def _ja(self) -> str:
        r = self.rng
        thing, thing2 = r.sample(THINGS, 2)
        tech, tech2 = r.sample(EN_TECH, 2)
        return r.choice(JA_TEMPLATES).format(place=r.choice(PLACES), thing=thing, thing2=thing2, adj=r.choice(ADJ),
                                             tech=tech, tech2=tech2)

    def _en(self) -> str:
        r = self.rng
        word, word2 = r.sample(EN_WORDS, 2)
        tech, tech2 = r.sample(EN_TECH, 2)
        return r.choice(EN_TEMPLATES).format(word=word, word2=word2, tech=tech, tech2=tech2,
                                             en_place=r.choice(EN_PLACES))

    def text(self, sentences: int | None = None) -> str:
        """Japanese sentences run together without spaces (。、！), English ones with them."""
        r = self.rng
        out = ""
        for _ in range(sentences or r.choices((1, 2, 3), weights=(5, 4, 1))[0]):
            if r.random() < 0.62:
                out += self._ja() + r.choice(["。", "！", "、", ""])
            else:  # straight after Japanese, often without a space: 「Rustで」「東京Meetup」
                out += ("" if not out or r.random() < 0.4 else " ") + self._en() + r.choice([".", "!", ""])
        out = out.rstrip("、")
        roll = r.random()
        if roll < 0.06:
            out += r.choice(HALF_WIDTH)
        elif roll < 0.12:
            out = r.choice(FULL_WIDTH) + out
        elif roll < 0.16:
            out += " " + r.choice(ACCENTED)
        if r.random() < 0.3:
            out += " " + r.choice(HASHTAGS)
        if r.random() < 0.12:
            out = r.choice(MENTIONS) + " " + out
        if r.random() < 0.2:
            out += r.choice(EMOJI)
        return out.strip()

    # ---- events --------------------------------------------------------------------------------

    def _event(self, author: _Author, content: str, topics: list[str], kind: int, created_at: int,
               tags: list[list[str]]) -> dict:
        while True:
            event = build_event(pubkey=author.pubkey, content=content, topics=topics, kind=kind,
                                created_at=created_at, tags=tags)
            if event["id"] not in self.seen:
                self.seen.add(event["id"])
                return event
            created_at += 1  # the same signed event twice would be one event: sign another second

    def _skew(self, now: int) -> int:
        return now - self.rng.randint(0, 900)  # clients sign a little before the relay sees them

    def next(self, now: int, expire_before: int | None) -> tuple[dict, str]:
        """The next event at relay clock `now`. An expiring note expires before `expire_before` when it
        can (with a margin), else years later; None: always years later."""
        r = self.rng
        author = r.choice(self.authors)
        roll = r.random()
        if roll < 0.03:
            return self._replaceable(author, now, 0, PROFILE)
        if roll < 0.04:
            return self._replaceable(author, now, 3, CONTACTS)
        if roll < 0.05:
            return self._replaceable(author, now, 10002, RELAYS)
        if roll < 0.09:
            return self._article(author, now)
        if roll < 0.11 and (author.notes or author.articles):
            return self._deletion(author, now)
        topics = self._note_topics()
        tags: list[list[str]] = []
        role, created_at = NOTE, self._skew(now)
        if roll < 0.13:
            role = EXPIRING
            expires = now + r.randint(EXPIRE_MARGIN, 20 * DAY)
            if expire_before is None or expires > expire_before - EXPIRE_MARGIN:
                expires = T_END + r.randint(*FAR_EXPIRY_YEARS) * 365 * DAY + r.randint(0, DAY)
            tags.append([r.choice(["exp", "exp", "expiration"]), str(expires)])
        elif roll < 0.16:
            role, created_at = BACKDATED, now - r.randint(1, 8) * 365 * DAY - r.randint(0, 300 * DAY)
        if r.random() < 0.05:
            tags.append(["title", self._ja()[:30]])
        elif r.random() < 0.02:
            tags.append(["subject", self._en()])
        if r.random() < 0.1:
            tags.append(["p", r.choice(self.authors).pubkey])
        event = self._event(author, self.text(), topics, 1, created_at, tags)
        if role != EXPIRING:  # deleting a note that expires anyway shows nothing new
            author.notes.append((event["id"], topics))
        return event, role

    def _note_topics(self) -> list[str]:
        fan_out = min(len(self.topics), self.rng.choices((1, 2, 3), weights=(70, 22, 8))[0])
        chosen: list[str] = []
        while len(chosen) < fan_out:
            topic = self._topic()
            if topic not in chosen:
                chosen.append(topic)
        return chosen

    def _replaceable(self, author: _Author, now: int, kind: int, role: str) -> tuple[dict, str]:
        r = self.rng
        newest = author.versions.get(kind)
        late = newest is not None and r.random() < 0.1  # an older version arriving after a newer one
        created_at = newest - r.randint(1_000, 100_000) if late else max(self._skew(now), (newest or 0) + 1)
        if kind == 0:
            content = json.dumps({"name": r.choice(NAMES), "about": self.text(1), "picture": ""}, ensure_ascii=False)
            tags: list[list[str]] = []
        elif kind == 3:
            content, tags = "", [["p", a.pubkey] for a in r.sample(self.authors, min(len(self.authors), 3))]
        else:
            content, tags = "", [["r", f"wss://relay{r.randint(1, 9)}.kukuri.example"]]
        if not late:
            author.versions[kind] = created_at
        return self._event(author, content, [author.home], kind, created_at, tags), LATE_VERSION if late else role

    def _article(self, author: _Author, now: int) -> tuple[dict, str]:
        r = self.rng
        if author.articles and r.random() < 0.5:
            d = r.choice(sorted(author.articles))  # a revision: same d, same topics
        else:
            author.articles_written += 1
            d = f"article-{author.articles_written}"
            author.articles[d] = self._note_topics()[:2]
        newest = author.versions.get((30023, d))
        created_at = max(self._skew(now), (newest or 0) + 1)
        author.versions[(30023, d)] = created_at
        title = r.choice([self._ja()[:24], self._en()[:40]])
        tags = [["d", d], ["title", title], ["published_at", str(created_at)]]
        return self._event(author, self.text(r.randint(3, 7)), author.articles[d], 30023, created_at, tags), ARTICLE

    def _deletion(self, author: _Author, now: int) -> tuple[dict, str]:
        r = self.rng
        if author.articles and (not author.notes or r.random() < 0.2):
            d = r.choice(sorted(author.articles))
            topics = author.articles.pop(d)
            tags = [["a", f"30023:{author.pubkey}:{d}"]]
        else:
            event_id, topics = author.notes.popleft() if r.random() < 0.5 else author.notes.pop()
            tags = [["e", event_id]]
        return self._event(author, r.choice(DELETE_NOTES), topics[:1], 5, self._skew(now), tags), DELETION


def corpus(posts: int, topics: int, seed: int = 42, namespace: str = "") -> Iterator[Item]:
    """Every event of the corpus in publishing order: the history up to `T_REINDEX`, then the tail."""
    if posts < 0 or topics < 1:
        raise ValueError("posts must be >= 0 and topics >= 1")
    model = Model(seed, topic_ids(topics, namespace), authors=max(5, posts // 25))
    tail = tail_size(posts)
    history = posts - tail
    for n in range(posts):
        if n < history:
            now = T_START + (n * (T_REINDEX - T_START - 2 * EXPIRE_MARGIN)) // max(history, 1)
            event, role = model.next(now, expire_before=T_REINDEX)
        else:
            now = T_REINDEX + 60 + ((n - history) * (DAY - 120)) // max(tail, 1)
            event, role = model.next(now, expire_before=None)
        yield Item(n, event, now, role)


def batches(posts: int, topics: int, seed: int = 42, namespace: str = "") -> Iterator[list[Item]]:
    """The corpus in batches of `BATCH`, the history and the tail never in the same batch."""
    history = posts - tail_size(posts)
    batch: list[Item] = []
    for item in corpus(posts, topics, seed, namespace):
        if batch and (len(batch) == BATCH or (item.n == history)):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def live_traffic(topics: list[str], seed: int, clock: Callable[[], float] = time.time) -> Iterator[Item]:
    """Endless new events for a demo writer: the same model, its own authors, at the real clock."""
    model = Model(seed, topics, authors=100, author_kind="live-author")
    n = 0
    while True:
        now = int(clock())
        event, role = model.next(now, expire_before=None)
        yield Item(n, event, now, role)
        n += 1
