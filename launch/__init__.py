"""absl entry points: each parses flags and calls the library, nothing more."""

import contextlib

from absl import app, flags, logging


def quiet_logs() -> None:
    """INFO logs (jax probing for a TPU, ...) hide the output; keep warnings unless -v is given."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


@contextlib.contextmanager
def usage_errors(*kinds: type[Exception]):
    """Turns a bad config or input (ValueError, FileNotFoundError, ConnectionError: a server the
    config names refuses connections, or `kinds`) raised by the library into absl's usage error:
    its message, which names the field, and no traceback."""
    try:
        yield
    except kinds or (ValueError, FileNotFoundError, ConnectionError) as err:
        raise app.UsageError(str(err)) from err
