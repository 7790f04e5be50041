"""The operator commands of `inferd` (drain, undrain, reload) and what every operator command shares (exit codes,
settings and Redis from --config, plain-text tables); the programs in tools/ are built on it."""
