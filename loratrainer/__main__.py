import sys

from loratrainer.cli import main

sys.exit(main())
