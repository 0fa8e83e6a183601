import sys

from mmfl.cli import main

sys.exit(main())
