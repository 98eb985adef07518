"""`python -m osr_sdk` runs the command line."""

import sys

from osr_sdk.cli import main

sys.exit(main())
