"""``python -m workers``: the scoring worker program (what the Kubernetes Deployments run)."""

import sys

from nearline.worker.cli import main

sys.exit(main())
