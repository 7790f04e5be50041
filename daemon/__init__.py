"""inferd: an on-prem, single-host, multi-GPU image-classification appliance."""
