"""Two processes on localhost with jax.distributed (CPU gloo collectives) train and sample like one."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from corea_jax.parallel import multihost
from tests.helpers import REPO
from tests.test_parallel_train import run_steps

pytestmark = pytest.mark.slow  # servers, subprocesses, notebooks, training runs: `pytest -m slow`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path):
    port = _free_port()
    env = dict(os.environ, COREA_COORDINATOR_ADDRESS=f"localhost:{port}", COREA_NUM_PROCESSES="2",
               PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.multihost_worker", str(tmp_path)], cwd=REPO,
                              env=dict(env, COREA_PROCESS_ID=str(i)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]

    result = np.load(tmp_path / "result.npz")
    want_losses, want = run_steps(None, steps=2)
    np.testing.assert_allclose(result["losses"], want_losses, rtol=1e-5, atol=1e-5)
    for i, leaf in enumerate(jax.tree.leaves(want.params)):
        np.testing.assert_allclose(result[f"p{i}"], np.asarray(leaf), rtol=1e-5, atol=1e-5)
    from tests.multihost_worker import rollout

    import corea_jax
    from tests.test_parallel_train import CFG

    np.testing.assert_array_equal(result["tokens"], rollout(corea_jax.Model(CFG, want.params)))
    # Per-host loading: process 0 loaded rows [0, 4) of the 8-row micro-batches, process 1 [4, 8).
    assert result["rows"].tolist() == [0, 4]
    assert np.load(tmp_path / "rows1.npy").tolist() == [4, 8]


def test_cluster_settings_are_checked():
    assert not multihost.cluster_from(environ={}).distributed
    cluster = multihost.cluster_from(environ={"COREA_COORDINATOR_ADDRESS": "10.0.0.1:1234",
                                              "COREA_NUM_PROCESSES": "4", "COREA_PROCESS_ID": "3"})
    assert cluster == multihost.Cluster("10.0.0.1:1234", 4, 3)
    assert multihost.cluster_from("h:1", 2, 0, environ={"COREA_PROCESS_ID": "1"}).process_id == 0
    with pytest.raises(ValueError, match=r"process_id: expected an integer in \[0, 2\)"):
        multihost.cluster_from("h:1", 2, 2, environ={})
    with pytest.raises(ValueError, match="coordinator_address: expected 'host:port'"):
        multihost.cluster_from(None, 2, 0, environ={})
