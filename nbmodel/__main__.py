"""``python -m nbmodel ...`` is the ``nbmodel`` command."""
import sys

from .cli import main

sys.exit(main())
