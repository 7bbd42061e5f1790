"""``python -m tinyhd`` is the same command line as the ``tinyhd`` console script."""
import sys

from tinyhd.cli import main

sys.exit(main())
