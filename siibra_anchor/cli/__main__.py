"""``python -m siibra_anchor.cli`` is ``siibra-anchor``."""

import sys

from siibra_anchor.cli import main

sys.exit(main())
