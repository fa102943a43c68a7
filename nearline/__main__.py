"""``python -m nearline``.

Guarded: ``nearline serve`` spawns its worker processes, and a spawned interpreter imports the
parent's main module again (it must not run the command a second time).
"""

import sys

from nearline.cli import main

if __name__ == "__main__":
    sys.exit(main())
