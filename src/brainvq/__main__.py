import sys

from brainvq.cli import main

sys.exit(main())
