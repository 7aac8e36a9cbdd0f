"""``python -m unionfs``: the same as the ``unionfs`` command."""

import sys

from unionfs.cli import main

sys.exit(main())
