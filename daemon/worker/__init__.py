"""A shard's worker parts: one batch's inference, the model swap, device truth, the heartbeat."""
