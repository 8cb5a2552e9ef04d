"""``python -m fedsigma``: the same as the ``fedsigma`` command."""

import sys

from fedsigma.cli import main

sys.exit(main())
