"""``python -m mounttool.demo OUT.tar``: write the demo image as an oci-archive."""

import sys
from pathlib import Path

from mounttool.demo import NAME, write_archive

if len(sys.argv) != 2:
    sys.exit("usage: python -m mounttool.demo OUT.tar")
write_archive(Path(sys.argv[1]))
print(f"wrote {sys.argv[1]} ({NAME})")
