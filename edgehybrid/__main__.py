"""``python -m edgehybrid``: the same CLI as the ``edgehybrid`` console script."""

import sys

from edgehybrid.cli import main

sys.exit(main())
