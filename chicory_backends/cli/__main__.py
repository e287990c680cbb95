"""``python -m chicory_backends.cli``: the same as the ``chicory-backends`` command."""

import sys

from chicory_backends.cli import main

sys.exit(main())
