"""`gencc sample --ray-address` on a local 2-node Ray cluster (two `ray start` node processes on this
machine, scripts/ray_cluster.py): the same samples as one process, the artifact checked on both nodes."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from ray_cluster import ENV, local_cluster

GENCC = Path(sys.executable).with_name("gencc")


@pytest.mark.slow
def test_a_two_node_cluster_draws_the_plain_samples(tmp_path, tiny_moons_artifact):
    args = [str(tiny_moons_artifact), "--n", "301", "--steps", "8", "--seed", "2", "--batch-size", "32"]
    env = {**os.environ, **ENV, "OMP_NUM_THREADS": "1"}
    plain = subprocess.run([str(GENCC), "sample", *args, "--out", str(tmp_path / "plain.npy")], env=env,
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    with local_cluster(nodes=2) as address:
        done = subprocess.run([str(GENCC), "sample", *args, "--out", str(tmp_path / "ray.npy"), "--ray-address",
                               address, "--ray-actors", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Both actors start, but how many get blocks depends on which is ready first (10 blocks of 32 rows here):
    # the report names the ones that drew samples, and they must account for all of them.
    drawn = [int(m) for m in re.findall(r"actor \S+: (\d+) samples", done.stdout)]
    assert re.search(r"Ray: [12] actors", done.stdout) and sum(drawn) == 301, done.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "ray.npy"), np.load(tmp_path / "plain.npy"))
