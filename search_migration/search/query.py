"""Query words as the index holds them, and the tsqueries that find them through the GIN index."""

from __future__ import annotations

from dataclasses import dataclass

from search_migration.search.text import normalize, runs


@dataclass(frozen=True)
class Term:
    """One query word as the index holds it; `prefix` only for the query's last word."""

    text: str
    cjk: bool
    prefix: bool

    @property
    def bare(self) -> str:
        return self.text.lstrip("#@")

    def tsquery(self) -> str:
        def lit(token: str) -> str:
            return "'" + token.replace("\\", "\\\\").replace("'", "''") + "'"

        if not self.cjk or self.text[0] in "#@":
            return lit(self.text) + (":*" if self.prefix else "")
        if len(self.text) == 1:  # a single character: the start of a bigram or a run's final unigram
            return lit(self.text) + ":*"
        grams = [self.text[i:i + 2] for i in range(len(self.text) - 1)]
        return "(" + " <-> ".join(lit(g) for g in grams) + ")" if len(grams) > 1 else lit(grams[0])


def parse_query(q: str) -> list[Term]:
    """Query words in order: Latin/digit words and CJK runs. A `#tag` or `@mention` is searched as its
    word, as Meilisearch does (its tokenizer separates on `#` and `@`): `#nostr` finds `nostr`."""
    words: list[tuple[str, bool]] = []
    for word in normalize(q).split():
        for cjk, run in runs(word):
            bare = run.lstrip("#@")
            if bare.strip("_"):
                words.append((bare, cjk))
    return [Term(text, cjk, i == len(words) - 1) for i, (text, cjk) in enumerate(words)]


def phrase_tsquery(terms: list[Term]) -> str | None:
    """The words next to each other in query order (two CJK words with or without a space between);
    None for one word, or where a tag or a one-character word makes positions ambiguous."""
    if len(terms) < 2 or any(t.text[0] in "#@" or (t.cjk and len(t.text) < 2) for t in terms):
        return None
    expr = terms[0].tsquery()
    for prev, term in zip(terms, terms[1:]):
        word = term.tsquery()
        # in one CJK run the next word's first bigram sits two past this word's last (a bigram spans
        # the join); across a space, one past
        expr = f"(({expr}) <-> {word} | ({expr}) <2> {word})" if prev.cjk and term.cjk else f"({expr}) <-> {word}"
    return expr


def bucket_tsquery(terms: list[Term]) -> str:
    return " & ".join(t.tsquery() for t in terms)

