import sys

from msf_fast.eval.cli import main

sys.exit(main())
