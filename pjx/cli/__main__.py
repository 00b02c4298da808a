import sys

from pjx.cli import main

sys.exit(main())
