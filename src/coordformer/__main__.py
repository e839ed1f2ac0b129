"""`python -m coordformer ...` is the `coordformer` command (for environments without the console
script)."""

import sys

from .interrupts import install

install()  # before the imports below: Ctrl-C during them exits with one line, not a traceback

from .cli import main  # noqa: E402

sys.exit(main())
