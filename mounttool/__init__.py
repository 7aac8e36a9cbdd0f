"""mounttool: container images → content-addressed store → unionfs-mounted root filesystems."""
