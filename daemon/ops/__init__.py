"""Running the appliance: the run dir, the front door's config, capacity, systemd notify, the shard watch, draining, NVML."""
