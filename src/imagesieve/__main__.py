"""`python -m imagesieve`: the `imagesieve` command."""

import sys

from imagesieve.cli import main

sys.exit(main())
