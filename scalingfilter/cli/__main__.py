"""`python -m scalingfilter.cli COMMAND ...`, the same as the `scalingfilter` console script."""

import sys

from scalingfilter.cli.app import main

sys.exit(main())
