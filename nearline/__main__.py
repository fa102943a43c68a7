"""``python -m nearline``."""

import sys

from nearline.cli import main

sys.exit(main())
