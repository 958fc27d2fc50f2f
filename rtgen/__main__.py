"""``python -m rtgen``."""

import sys

from rtgen.cli import main

sys.exit(main())
