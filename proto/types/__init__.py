"""containerd 0.2's types.API messages (api.proto) and their generated modules; no logic."""
