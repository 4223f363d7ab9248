import sys

from msf_fast.bench.cli import main

sys.exit(main())
