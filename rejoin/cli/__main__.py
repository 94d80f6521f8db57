import sys

from rejoin.cli.main import main

sys.exit(main())
