"""``python -m pixeljax.cli``: the `pixeljax` command."""

import sys

from pixeljax.cli import main

sys.exit(main())
