"""A cluster whose Name Server speaks only HTTPS and asks every client for a certificate: a user
who sets Consul's variables (and nothing else) runs a pipeline across it as on any other."""

from __future__ import annotations

import pytest

from tests.conftest import running_cluster
from tests.procs import free_port, run_cli
from tests.tlsfiles import make_tls


def test_a_pipeline_runs_across_an_https_name_server_with_only_consuls_variables(tmp_path):
    files = make_tls(tmp_path / "tls")
    with running_cluster(tmp_path, {"n1": ["--kernel"]}, tls=files) as cluster:
        assert cluster.url.startswith("https://")
        assert "ONEOS_NAMESERVER" not in cluster.env and cluster.env["CONSUL_HTTP_SSL"] == "true"
        # n1 joined and leads: oneosd registered, renews its session and won the election over TLS.
        assert cluster.leader() == "n1"
        code, out, err = cluster.run("seq 3", timeout=60)
        assert (code, out) == (0, b"1\n2\n3\n"), err
        assert "n1" in cluster.ctl("get", "nodes").stdout
        # The same command without the client certificate is refused, in one line.
        done = cluster.ctl("get", "nodes", env={"CONSUL_CLIENT_CERT": "", "CONSUL_CLIENT_KEY": ""})
        assert done.returncode != 0 and "CONSUL_CLIENT_CERT" in done.stderr
        assert done.stderr.strip().count("\n") == 0, done.stderr


@pytest.mark.parametrize("command", [["oneosctl", "get", "nodes"], ["oneosd", "n1"]])
def test_a_missing_ca_file_is_one_line_from_every_command(command, tmp_path):
    done = run_cli(command, env={"ONEOS_HOME": str(tmp_path), "ONEOS_NAMESERVER": "",
                                 "CONSUL_HTTP_ADDR": f"127.0.0.1:{free_port()}", "CONSUL_HTTP_SSL": "true",
                                 "CONSUL_CACERT": str(tmp_path / "missing-ca.pem")}, timeout=30)
    assert done.returncode == 1
    assert done.stderr == f"{command[0]}: CONSUL_CACERT {tmp_path / 'missing-ca.pem'} cannot be read: no such file " \
                          "or directory; give a file that exists and that this user may read\n"
