"""absl entry points: each parses flags and calls the library, nothing more."""

from absl import flags, logging


def quiet_logs() -> None:
    """INFO logs (jax probing for a TPU, ...) hide the output; keep warnings unless -v is given."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
