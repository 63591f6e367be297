"""`python -m condense.cli ARGS`, the same as `condense ARGS`."""
import sys

from condense.cli import main

sys.exit(main())
