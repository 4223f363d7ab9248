import sys

from dataset_prep.command_start import start_command

start_command("python -m msf_fast.bench")  # before the imports below, which take seconds

from msf_fast.bench.cli import main

sys.exit(main())
