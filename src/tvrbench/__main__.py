import sys

from tvrbench.cli import main

sys.exit(main())
