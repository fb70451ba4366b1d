import sys

from hubbeam.cli import main

sys.exit(main())
