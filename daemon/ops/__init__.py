"""Running the appliance: the run dir and its records, the front door's config, capacity, systemd notify, the
shard watch, draining, NVML, the shard status behind GET /shards and gpu_status."""
