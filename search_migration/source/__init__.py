"""The product's source contract (cn_relay), read-only except our consumer's offset."""
