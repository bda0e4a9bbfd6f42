"""The write path: the outbox consumer, the two engines' writers and dead-letter replay."""
