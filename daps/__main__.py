import sys

from daps.cli import main

sys.exit(main())
