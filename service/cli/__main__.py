"""``python -m service.cli`` is ``gatelens``."""

import sys

from service.cli import main

sys.exit(main())
