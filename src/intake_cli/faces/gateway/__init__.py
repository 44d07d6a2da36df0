"""`intake gateway`: the buyers' door (HTTP, JWT, micro-batched claims)."""
