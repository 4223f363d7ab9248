"""The command line every command shares: a parser without abbreviations (`--epoch` is not `--epochs`) whose
mistakes are one line on stderr with the closest valid option, exit code 2, instead of the whole usage; and Ctrl-C
before a command's own handling is in place as one line too."""
from __future__ import annotations

import argparse
import difflib
import math
import re
import sys


class OneLineParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._arguments: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._arguments = list(sys.argv[1:] if args is None else args)  # for error(), which argparse calls without
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        if message.startswith("the following arguments are required"):
            # argparse tells a missing option before an unknown one, which is often the misspelt missing one
            # (`--images-per-second` for `--images-per-s`): both are told
            known = set(option_strings(self))
            typos = [self.unknown_option(argument) for argument in self._arguments
                     if argument.startswith("--") and argument.split("=", 1)[0] not in known]
            message = "; ".join([*typos, message])
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            problems, value_expected = [], False
            for argument in unknown.group(1).split():
                if argument.startswith("-"):
                    problems.append(self.unknown_option(argument))
                    value_expected = "=" not in argument
                elif value_expected:  # the unknown option's value: no mistake of its own
                    value_expected = False
                else:
                    problems.append(f"unexpected argument {argument!r}")
            message = "; ".join(problems)
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)

    def unknown_option(self, argument: str) -> str:
        name = argument.split("=", 1)[0]
        options = option_strings(self)
        extensions = [option for option in options if option.startswith(name)]  # an abbreviation
        # compared without the dashes, which every option shares (they made --bogus "close" to --out)
        bare = {option.lstrip("-"): option for option in options}
        closest = extensions[:1] or [bare[match] for match in difflib.get_close_matches(name.lstrip("-"), bare, n=1,
                                                                                          cutoff=0.6)]
        return f"unknown option {name}" + (f" (did you mean {closest[0]}?)" if closest else "")


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default, unless the help already states one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or action.required or action.default in (None, argparse.SUPPRESS)
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def int_at_least(low: int):
    """An argparse type: an integer >= `low`."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


positive_int, non_negative_int = int_at_least(1), int_at_least(0)


def int_between(low: int, high: int):
    """An argparse type: an integer from `low` to `high`."""
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, got {value}")
        return value
    parse.__name__ = "int"
    return parse


def positive_number(text: str) -> float:
    """An argparse type: a finite number above 0."""
    value = float(text)
    if not 0 < value < math.inf:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:  # NaN too
        hint = f" (a fraction: {value / 100:g} for {value:g} %)" if 1 < value <= 100 else ""
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}{hint}")
    return value

DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:  # NaN too
        hint = f" (a fraction: {value / 100:g} for {value:g} %)" if 1 < value <= 100 else ""
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}{hint}")
    return value


def device_name(text: str) -> str:
    """A --device option's type: auto, cpu, cuda or cuda:N (whether that device is there is checked when torch
    has loaded)."""
    if not DEVICE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, cpu, cuda or cuda:N")
    return text


def width_by_height(text: str) -> tuple[int, int]:
    """An argparse type: WIDTHxHEIGHT, both positive (500x375)."""
    match = re.fullmatch(r"\s*([0-9]+)\s*[xX]\s*([0-9]+)\s*", text)
    if not match or 0 in (size := (int(match[1]), int(match[2]))):
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT in pixels, both positive (e.g. 500x375)")
    return size


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option of `parser` and of its subcommands (unknown options are reported by the top parser)."""
    found = []
    for action in parser._actions:
        found += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                found += [option for option in option_strings(subparser) if option not in found]
    return found


def one_line_on_ctrl_c(program: str) -> None:
    """Ctrl-C that no handler of the command catches (while torch, numpy or FFCV load: seconds) prints
    `PROGRAM: interrupted` instead of the import's traceback; the interpreter then ends by SIGINT as usual (130 in
    a shell). Commands call it before their heavy imports."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            print(f"{program}: interrupted", file=sys.stderr)
        else:
            previous(kind, value, traceback)
    sys.excepthook = hook
