import sys

from ftkubectl.cli import main

sys.exit(main())
