"""A sweep on a real Ray cluster started as users start one: ``ray start --head`` on loopback
with Ray's default authentication, then ``randpos sweep --executor ray --address``.

Ray (2.59 and later) turns token authentication on for a head that finds a token on its
machine (``~/.ray/auth_token``), but a client given an explicit ``--address`` sends its token
only with ``RAY_AUTH_MODE=token``. So the test gives its own home folder a token (``ray
get-auth-token --generate``), starts the head there, checks that a client without
``RAY_AUTH_MODE`` gets one line naming the fix, then runs the sweep with it and checks the
store and the run folders. The head runs with ``--block`` as the test's child process and is
stopped through it (never ``ray stop``, which stops every Ray instance on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from tiny import TINY_BASE

from randpos.results.store import ResultsStore

# over 30 s on a 2-core machine (the head starts, workers import torch): CI runs them apart
pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY = Path(sys.executable).with_name("ray")
RANDPOS = Path(sys.executable).with_name("randpos")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head on 127.0.0.1 with a token in a home folder of its own; yields (address,
    the environment of a client on the same machine without RAY_AUTH_MODE)."""
    pytest.importorskip("ray")
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([str(RAY), "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    assert (home / ".ray" / "auth_token").is_file()
    port, *others = free_ports(8)
    temp = tempfile.mkdtemp(prefix="rp-ray-", dir="/tmp")  # short: Ray's socket paths
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--block", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp}", f"--ray-client-server-port={others[0]}",
         f"--node-manager-port={others[1]}", f"--object-manager-port={others[2]}",
         f"--dashboard-agent-listen-port={others[3]}", f"--dashboard-agent-grpc-port={others[4]}",
         f"--metrics-export-port={others[5]}", f"--runtime-env-agent-port={others[6]}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
            time.sleep(0.5)
        assert "Token authentication is enabled" in (tmp_path / "head.log").read_text()
        yield f"127.0.0.1:{port}", env
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_sweep_runs_on_a_ray_head_started_with_ray_start(tmp_path, ray_head):
    address, env = ray_head
    spec = tmp_path / "cluster.yaml"
    base = {**TINY_BASE, "steps": 4, "batch_size": 8, "log_every": 2}
    spec.write_text(yaml.safe_dump({"name": "cluster", "base": base, "grid": {"seed": [0, 1]}}))
    command = [str(RANDPOS), "sweep", str(spec), "--executor", "ray", "--address", address,
               "--store", "r.sqlite", "-q"]  # fmt: skip

    # without RAY_AUTH_MODE=token the head refuses the client: one line names the fix (Ray
    # retries for RAY_gcs_server_port_wait_time_s seconds first: 2 here, 20 by default)
    refused = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env={**env, "RAY_gcs_server_port_wait_time_s": "2"})  # fmt: skip
    lines = (refused.stdout + refused.stderr).strip().splitlines()
    assert refused.returncode == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "requires token authentication" in lines[0] and "RAY_AUTH_MODE=token" in lines[0]

    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**env, "RAY_AUTH_MODE": "token"})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    store = ResultsStore(tmp_path / "r.sqlite")
    runs = store.runs(sweep="cluster")
    assert len(runs) == 2 and set(runs["status"]) == {"done"}
    assert len(store.per_length(sweep="cluster")) == 2 * TINY_BASE["eval_max_length"]
    for rid in runs["run_id"]:  # written by the cluster's workers, where the leader said
        assert (tmp_path / "sweeps" / "cluster" / rid / "summary.json").is_file()


def test_no_cluster_at_the_address_is_one_line(tmp_path):
    pytest.importorskip("ray")
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Ray's own waits for a cluster that is not there, shortened (40 s by default)
    env.update(
        HOME=str(tmp_path),
        RAY_gcs_server_port_wait_time_s="1",
        RAY_py_gcs_connect_timeout_s="2",
        RAY_gcs_rpc_server_connect_timeout_s="1",
    )
    command = [str(RANDPOS), "sweep", "tiny", "--executor", "ray", "--address",
               f"127.0.0.1:{port}", "--store", "r.sqlite"]  # fmt: skip
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=300)  # fmt: skip
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: cannot connect to a Ray cluster at 127.0.0.1:{port}")
    assert "ray start --head" in lines[0]
