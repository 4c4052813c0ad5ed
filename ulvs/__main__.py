import sys

from ulvs.cli.main import main

sys.exit(main())
