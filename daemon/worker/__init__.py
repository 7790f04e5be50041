"""A shard's worker parts: its start (serve or refuse), how a batch is formed, one batch's inference, the model swap,
device truth, the heartbeat."""
