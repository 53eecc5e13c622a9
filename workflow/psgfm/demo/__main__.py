"""``python -m psgfm.demo``: generate the demo cohort (see :func:`psgfm.demo.cohort.main`)."""

import sys

from psgfm.demo.cohort import main

sys.exit(main())
