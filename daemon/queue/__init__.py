"""The Redis protocol between the API and the shards: keys, Lua scripts, wire format, the two faces, the registry, job pixels, connections."""
