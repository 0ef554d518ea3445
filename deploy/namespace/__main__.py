"""`python -m mfvan`: the `mfvan` command."""

import sys

from mfvan.deploy.cli import main

sys.exit(main())
