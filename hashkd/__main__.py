import sys

from hashkd.cli import main

sys.exit(main())
