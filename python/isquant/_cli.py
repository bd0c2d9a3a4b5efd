"""The ``isquant`` command of the wheel: the Rust command line itself (``isquant::cli::main``,
what the ``isquant`` binary runs), so its flags, output and exit codes are the binary's."""

import signal
import sys

from . import _isquant


def main() -> None:
    # Ctrl-C ends the command at once, as it ends the binary (Python's own handler would only
    # act once the Rust code returns).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_isquant.main(sys.argv))
