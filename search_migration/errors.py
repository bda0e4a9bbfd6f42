"""One line of an exception: what operators read in run logs, dead letters, stall records and CLI errors."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The message's first line (the class name when it has none), cut to `limit` characters."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
