"""Operations: status, Prometheus metrics and the durable counters behind them."""
