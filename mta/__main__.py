import sys

from mta.cli import main

sys.exit(main())
