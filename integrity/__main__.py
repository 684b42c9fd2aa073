import sys

from integrity.cli import main

sys.exit(main())
