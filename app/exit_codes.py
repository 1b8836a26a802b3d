"""The exit codes of every `brain-tumor` command, so that the service, `predict` and both daemons say the same thing
with the same number (scripts and orchestrators act on them: a restart on 3, a fix of the configuration on 2), and
`fail`, how each says why it stops."""

import sys

EXIT_OK = 0
EXIT_FAILED = 1
"""`predict`: a file could not be predicted; `pacs-sync --once`: Orthanc could not be reached."""
EXIT_USAGE = 2
"""Bad arguments or configuration: nothing was started."""
EXIT_MODELS = 3
"""The models could not be loaded."""
EXIT_INTERRUPTED = 130


def fail(message: str, code: int) -> int:
    """Say why the command stops, on standard error, and give its exit code (every `brain-tumor` command's, with
    `printable`, which keeps a file name in the message from forging a line)."""
    print(printable(message), file=sys.stderr)
    return code


def printable(text: str) -> str:
    """`text` with each character a terminal would act on (newline, escape, other controls) written as its Python
    escape: a file name holding them must not forge a line or a colour in the output."""
    return "".join(character if character.isprintable() else repr(character)[1:-1] for character in text)
