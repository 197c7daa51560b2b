"""``python -m ichlib`` runs the command line."""

import sys

from ichlib.cli import main

sys.exit(main())
