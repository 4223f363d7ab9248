import sys

from dataset_prep.command_start import start_command
from msf_fast.eval import PROG

start_command(PROG)  # before the imports below, which take seconds

from msf_fast.eval.cli import main

sys.exit(main())
