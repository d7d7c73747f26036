"""What the scripts share on the command line: bad input becomes one line on stderr and exit code 2 (as argparse
does for a bad flag), found before any data is read or any file written; a crash keeps its traceback.

    with usage_errors(): ...        # ValueError / OSError raised inside -> UsageError
    run_command(main_body, argv)    # UsageError -> "error: <message>", exit 2; `--traceback` shows it whole
"""

import os
import sys
from contextlib import contextmanager

TRACEBACK_FLAG = "--traceback"
TRACEBACK_HELP = "Show the full traceback of an input error instead of its one-line message."


class UsageError(ValueError):
    """Bad input (a flag, a path, a column, an image, a config field) found before the work started."""


@contextmanager
def usage_errors():
    """Re-raise the ValueErrors and OSErrors of the block, which checks what the user gave, as UsageErrors."""
    try:
        yield
    except UsageError:
        raise
    except (ValueError, OSError) as error:
        raise UsageError(str(error)) from error


def run_command(body, argv=None) -> int:
    """Run `body()`; a UsageError prints one line and returns 2, unless `--traceback` is in argv."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        body()
    except UsageError as error:
        if TRACEBACK_FLAG in argv:
            raise
        print(f"{os.path.basename(sys.argv[0]) or 'hf_vit'}: error: {error}", file=sys.stderr)
        return 2
    return 0


def looks_like_local_path(name: str) -> bool:
    """A name meant as a local path, not a Hub id ("owner/name" or "name"): it starts with "/", ".", "~" or a
    drive, has more than one separator, or exists on disk."""
    return (
        os.path.exists(name)
        or name.startswith(("/", ".", "~", "\\"))
        or os.path.splitdrive(name)[0] != ""
        or name.replace("\\", "/").count("/") > 1
    )


def check_local_path(name: str, what: str) -> None:
    """A path-like `name` must exist: FileNotFoundError naming `what` (e.g. "--model_name_or_path") if not."""
    if looks_like_local_path(name) and not os.path.exists(name):
        raise FileNotFoundError(f"{what} {name!r}: no such file or directory")
