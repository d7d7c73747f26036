"""What guards a user's input and files, for every job: the errors of bad input, the path checks, atomic writes.

UsageError                 bad input found before the work started (a command prints it in one line)
CheckpointMismatchError    weights that do not fit a model, every bad key named
with usage_errors(): ...   ValueError / OSError raised inside -> UsageError
check_local_path / check_output_dir   a path that must exist; an output directory that must not hold a run
claim_output_dir(output_dir)          the lock a run holds on its output directory
with replaced_atomically(path) as temporary: ...   a file written whole or not at all
"""

import os
from contextlib import contextmanager


class UsageError(ValueError):
    """Bad input (a flag, a path, a column, an image, a config field) found before the work started."""


def is_input_error(error: BaseException) -> bool:
    """A UsageError, or an error that says it is about the input itself (`input_error`, as the models'
    CheckpointMismatchError): a command prints it in one line."""
    return isinstance(error, UsageError) or getattr(error, "input_error", False)


@contextmanager
def usage_errors():
    """Re-raise the ValueErrors and OSErrors of the block, which checks what the user gave, as UsageErrors (errors
    that already say they are input errors keep their type)."""
    try:
        yield
    except (ValueError, OSError) as error:
        if is_input_error(error):
            raise
        raise UsageError(str(error)) from error


def looks_like_local_path(name: str) -> bool:
    """A name meant as a local path, not a Hub id ("owner/name" or "name"): it starts with "/", ".", "~" or a
    drive, has more than one separator, exists on disk, or its first part is a local folder ("runs/digit-vit" with a
    folder "runs" here: a mistyped run, not a Hub repository to wait for)."""
    parts = name.replace("\\", "/").split("/")
    return (
        os.path.exists(name)
        or name.startswith(("/", ".", "~", "\\"))
        or os.path.splitdrive(name)[0] != ""
        or len(parts) > 2
        or (len(parts) == 2 and os.path.isdir(parts[0]))
    )


def check_local_path(name: str, what: str) -> None:
    """A path-like `name` must exist: FileNotFoundError naming `what` (e.g. "--model_name_or_path") if not."""
    if looks_like_local_path(name) and not os.path.exists(name):
        raise FileNotFoundError(f"{what} {name!r}: no such file or directory")


OVERWRITE_HELP = "Replace what the output directory holds (else a directory that is not empty is refused)."


def check_output_dir(output_dir: str, overwrite: bool = False, resuming: bool = False) -> None:
    """An output directory that already holds files is refused, naming it, unless the job is told to overwrite it
    (`--overwrite_output_dir`) or goes on with the run in it (`--resume_from_checkpoint`): a second run would
    otherwise overwrite the first one's model, card and curves, and mix its checkpoints with the first one's."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"--output_dir {output_dir!r} is a file, not a directory")
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):  # the nearest folder that exists: where the directory will be made
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"--output_dir {output_dir!r} cannot be written ({existing!r} is not writable)")
    held = sorted(name for name in os.listdir(output_dir) if name != LOCK_FILE) if os.path.isdir(output_dir) else []
    if overwrite or resuming or not held:
        return
    raise FileExistsError(
        f"--output_dir {output_dir!r} already holds a run ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''}); "
        "choose another directory, pass --overwrite_output_dir to replace it, or --resume_from_checkpoint to go on "
        "with it"
    )


LOCK_FILE = ".hf_vit-run.lock"  # held by the run writing into an output directory


def claim_output_dir(output_dir: str):
    """Make `output_dir` and hold an exclusive lock on it for as long as the returned file stays open (the process's
    life at most: the system lets go of a dead process's lock): a second run started into the same directory at the
    same time is refused, rather than both writing into it. The jobs call it after `check_output_dir`, which names a
    path that is a file or a folder that cannot be written before any work."""
    import fcntl

    try:
        os.makedirs(output_dir, exist_ok=True)
        lock = open(os.path.join(output_dir, LOCK_FILE), "a", encoding="utf-8")
    except OSError as error:
        raise PermissionError(f"--output_dir {output_dir!r} cannot be written: {error.strerror}") from error
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise FileExistsError(
            f"--output_dir {output_dir!r} is being written by another run right now; choose another directory"
        ) from None
    return lock


@contextmanager
def replaced_atomically(path: str):
    """Yields a temporary path beside `path` to write; when the block ends it replaces `path` in one step, so a crash
    or a full disk mid-write leaves the old file (or none), never half a file."""
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
