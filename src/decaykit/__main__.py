"""``python -m decaykit`` runs the command line."""

import sys

from decaykit.cli.main import main

sys.exit(main())
