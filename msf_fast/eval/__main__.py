import sys

from dataset_prep.argument_parser import one_line_on_ctrl_c

one_line_on_ctrl_c("eval")  # before the imports below, which take seconds

from msf_fast.eval.cli import main

sys.exit(main())
