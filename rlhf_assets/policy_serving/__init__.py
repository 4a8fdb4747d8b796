"""``rlhf serve-policy``: the registry's policy served behind runtime guards (KL to its reference, response filters)."""
