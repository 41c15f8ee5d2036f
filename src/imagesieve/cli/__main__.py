"""`python -m imagesieve.cli`: the `imagesieve` command."""

import sys

from imagesieve.cli import main

sys.exit(main())
