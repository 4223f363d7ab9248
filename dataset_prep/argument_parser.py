"""The command-line parser every command uses: no abbreviations (`--epoch` is not `--epochs`), and a mistake
is one line on stderr with the closest valid option, exit code 2, instead of the whole usage."""
from __future__ import annotations

import argparse
import difflib
import re
import sys


class OneLineParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            message = "; ".join(self.unknown_option(argument) for argument in unknown.group(1).split())
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)

    def unknown_option(self, argument: str) -> str:
        name = argument.split("=", 1)[0]
        if not name.startswith("-"):
            return f"unexpected argument {argument!r}"
        options = [option for action in self._actions for option in action.option_strings]
        extensions = [option for option in options if option.startswith(name)]  # an abbreviation
        closest = extensions[:1] or difflib.get_close_matches(name, options, n=1, cutoff=0.6)
        return f"unknown option {name}" + (f" (did you mean {closest[0]}?)" if closest else "")
