"""What the jobs share on the command line: bad input becomes one line on stderr and exit code 2 (as argparse
does for a bad flag), found before any data is read or any file written; a crash keeps its traceback.

    run_command(main_body, argv)    # UsageError -> "error: <message>", exit 2; `--traceback` shows it whole
    main = command(parse_args, job)  # a job's main(argv) over run_command
    grouped_parser(...) / parse_into_dataclasses(parser, argv)   # dataclass flags, the newcomer's first
    parse_config_overrides(text) / check_config_overrides(config, overrides)   # --config_overrides
"""

import ast
import difflib
import os
import sys

from transformers import HfArgumentParser

from .guards import is_input_error, usage_errors

TRACEBACK_FLAG = "--traceback"
TRACEBACK_HELP = "Show the full traceback of an input error instead of its one-line message."


def run_command(body, argv=None) -> int:
    """Run `body()`; a UsageError prints one line and returns 2, unless `--traceback` is in argv."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        body()
    except (ValueError, OSError) as error:
        if not is_input_error(error) or TRACEBACK_FLAG in argv:
            raise
        print(f"{os.path.basename(sys.argv[0]) or 'hf_vit'}: error: {error}", file=sys.stderr)
        return 2
    return 0


def command(parse_args, job):
    """The `main(argv) -> exit code` of a script that runs `job(*parse_args(argv))`: bad input -> one line and exit
    code 2 (`--traceback` for the whole story)."""

    def main(argv=None) -> int:
        def body():
            with usage_errors():
                arguments = parse_args(argv)
            job(*arguments)

        return run_command(body, argv)

    return main


def grouped_parser(dataclass_types, start_here, description: str) -> HfArgumentParser:
    """An `HfArgumentParser` over `dataclass_types` whose --help shows the `start_here` flags first (in a group of
    their own), then each dataclass's group, and `--traceback`."""
    usage = "%(prog)s " + " ".join(f"[{flag} {flag[2:].split('_')[-1].upper()}]" for flag in start_here) + " [...]"
    parser = HfArgumentParser(dataclass_types, usage=usage, description=description)
    parser.add_argument_group("command line").add_argument(TRACEBACK_FLAG, action="store_true", help=TRACEBACK_HELP)
    start = parser.add_argument_group("start here")
    for flag in start_here:
        action = parser._option_string_actions[flag]
        for group in parser._action_groups:
            if action in group._group_actions:
                group._group_actions.remove(action)
        start._group_actions.append(action)
    parser._action_groups.remove(start)
    parser._action_groups.insert(2, start)  # after argparse's own two groups (positionals, -h)
    return parser


def parse_into_dataclasses(parser: HfArgumentParser, argv=None) -> list:
    """The command line (or one JSON file) -> one instance per dataclass; an unknown flag is a ValueError that
    suggests the nearest known one."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return list(parser.parse_json_file(os.path.abspath(argv[0])))
    *arguments, _command_line, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        flag = next((item for item in unknown if item.startswith("--")), unknown[0])
        close = difflib.get_close_matches(flag.split("=")[0], parser._option_string_actions, n=1)
        raise ValueError(
            f"unrecognized arguments: {' '.join(unknown)}" + (f"; did you mean {close[0]}?" if close else "")
        )
    return arguments


def parse_config_overrides(text: str | None) -> dict:
    """'a=1,b=gelu,c=[2,2]' -> {'a': 1, 'b': 'gelu', 'c': [2, 2]}; values are Python literals or strings."""
    overrides = {}
    if not text:
        return overrides
    for item in _split_top_level(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config_overrides: expected key=value, got {item!r}")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return overrides


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets, so list values survive."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item for item in items + [current] if item.strip()]


def check_config_overrides(config, overrides: dict) -> None:
    """Every override must name a field of `config`: a typo would otherwise be written into config.json and do
    nothing."""
    settable = set(config.to_dict()) - {
        "_name_or_path",
        "model_type",
        "transformers_version",
        "architectures",
        "id2label",
        "label2id",
    }
    for name in overrides:
        if name not in settable:
            close = difflib.get_close_matches(name, settable, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else f"its fields are {sorted(settable)}"
            raise ValueError(f"--config_overrides: {type(config).__name__} has no field {name!r}; {hint}")
