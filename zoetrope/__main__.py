"""`python -m zoetrope` (and `torchrun -m zoetrope train ...`) run the CLI."""

import sys

from zoetrope.cli import main

sys.exit(main())
