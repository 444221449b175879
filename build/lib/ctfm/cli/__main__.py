"""`python -m ctfm.cli` is the `ctfm` command."""

import sys

from ctfm.cli.main import main

sys.exit(main())
