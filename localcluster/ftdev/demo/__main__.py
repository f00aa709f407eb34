import sys

from ftdev.demo.cli import main

sys.exit(main())
