"""``python -m mounttool``."""

import sys

from mounttool.cli import main

sys.exit(main())
