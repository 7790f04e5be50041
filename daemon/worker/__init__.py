"""A shard's worker parts: how a batch is formed, one batch's inference, the model swap, device truth, the heartbeat."""
