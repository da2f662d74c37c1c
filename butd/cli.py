"""What every command line does with an error its user can act on (a wrong path, bad input, a stale
cache, a device that is not there): one line on stderr that names it, and exit status 1, not a
traceback. Errors of the code itself still show their traceback.

    if __name__ == "__main__":
        sys.exit(run(main))

``BUTD_TRACEBACK=1`` shows the traceback of a user error too.
"""
from __future__ import annotations

import os
import sys

# Exception types of user errors that are not OSError or ValueError, by module: stale caches, stores
# that cannot be read as they are, and Lightning's misconfigurations.
_USER_ERRORS = (("butd.questions.cache", "StaleCacheError"), ("butd.features.reader", "StoreError"),
                ("lightning_fabric.utilities.exceptions", "MisconfigurationException"))


def user_errors() -> tuple:
    """The exception types that describe the user's input, not a bug: files (OSError), values and
    formats (ValueError: TSVFormatError, QuestionFileError, GloveFormatError, ...) and those of
    ``_USER_ERRORS`` whose module is loaded (one that is not cannot have raised: importing it here
    would make every ``--help``, a SystemExit passing through ``run``, import torch)."""
    return (OSError, ValueError, *(getattr(sys.modules[module], name) for module, name in _USER_ERRORS
                                   if module in sys.modules))


def run(main, argv=None) -> int:
    """Call ``main(argv)``: its exit status (0 unless it returns an int); a user error is printed as
    ``error: <message>`` (one line) and gives 1, Ctrl-C gives 130, and a reader that closed the
    pipe early (``| head``) ends it quietly with 141, as SIGPIPE would."""
    try:
        result = main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Python would report the failed flush of stdout at exit too: point it at /dev/null first
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except user_errors() as e:
        if os.environ.get("BUTD_TRACEBACK"):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0
