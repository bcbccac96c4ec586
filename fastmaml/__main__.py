import sys

from fastmaml.cli import main

sys.exit(main())
