"""Shared test helpers: layer trees from data, whole-tree snapshots, real mounts."""
