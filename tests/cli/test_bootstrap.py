"""`oneosctl bootstrap`: the boot record and init manifest of a new cluster, written once.

The test clusters write the same documents in-process (tests/cluster.py); this runs the command.
"""

from __future__ import annotations

import pytest
import requests

from oneos import enrollment, state
from oneos.nameserver.client import NameServer
from oneos.secretfiles import write_secret
from tests.cluster import EMPTY_INIT
from tests.conftest import REAL_CONSUL
from tests.procs import NameServerProc, run_cli

MANAGEMENT = "5b1d2c3e-0000-4000-8000-00000000b007"


def bootstrap(url: str, *argv: str):
    return run_cli(["oneosctl", "bootstrap", *argv], env={"ONEOS_NAMESERVER": url})


def test_bootstrap_writes_the_boot_record_once_and_force_replaces_it(builtin_nameserver, tmp_path):
    init = tmp_path / "init.yaml"
    init.write_text(EMPTY_INIT)
    url = builtin_nameserver.url
    done = bootstrap(url, "--cluster", "e2e", "--pulsar-url", "pulsar://127.0.0.1:6651", "--init", str(init),
                     "--session-ttl", "10s", "--lock-delay", "3s", "--kernel-node", "k1")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"boot record written to {state.BOOT}\ninit manifest written to {state.INIT}\n"
    ns = NameServer(url)
    boot = state.read_boot(ns)
    assert (boot["cluster"], boot["pulsar"], boot["kernelNodes"], boot["sessionTTL"], boot["lockDelay"]) == (
        "e2e", {"url": "pulsar://127.0.0.1:6651", "namespace": "public/default"}, ["k1"], "10s", "3s")
    assert state.decode(ns.get(state.INIT)[1], "init")["spec"] == {"agents": []}

    again = bootstrap(url, "--cluster", "other", "--pulsar-url", "pulsar://127.0.0.1:6652")
    assert again.returncode == 0
    assert again.stdout == (f"boot record already at {state.BOOT}: left as it is (--force replaces it)\n"
                            f"init manifest already at {state.INIT}: left as it is (--force replaces it)\n")
    assert state.read_boot(ns) == boot

    forced = bootstrap(url, "--cluster", "other", "--pulsar-url", "pulsar://127.0.0.1:6652", "--force")
    assert forced.returncode == 0 and forced.stdout.startswith("boot record written to")
    assert state.read_boot(ns)["cluster"] == "other"


def test_bootstrap_records_the_pulsar_admin_url_and_the_blob_grace_period(builtin_nameserver):
    url = builtin_nameserver.url
    bad = bootstrap(url, "--pulsar-url", "pulsar://127.0.0.1:6651", "--pulsar-admin-url", "broker:8080")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "pulsar.adminUrl: 'broker:8080'" in bad.stderr, bad.stderr
    done = bootstrap(url, "--pulsar-url", "pulsar://127.0.0.1:6651", "--pulsar-admin-url", "http://broker:8080/",
                     "--blob-grace", "5m")
    assert done.returncode == 0, done.stderr
    boot = state.read_boot(NameServer(url))
    assert (boot["pulsar"]["adminUrl"], boot["blobGracePeriod"]) == ("http://broker:8080", "5m")


def test_bootstrap_records_pulsar_tls_and_token_authentication(builtin_nameserver):
    url = builtin_nameserver.url
    done = bootstrap(url, "--pulsar-url", "pulsar+ssl://broker:6651", "--pulsar-tls-trust-certs", "/etc/oneos/ca.pem",
                     "--no-pulsar-tls-hostname-verification", "--pulsar-auth", "token")
    assert done.returncode == 0, done.stderr
    assert state.read_boot(NameServer(url))["pulsar"] == {
        "url": "pulsar+ssl://broker:6651", "namespace": "public/default", "tlsTrustCertsFile": "/etc/oneos/ca.pem",
        "tlsHostnameVerification": False, "authentication": "token"}


def test_bootstrap_refuses_tls_certificates_for_a_plain_url_and_a_relative_path(builtin_nameserver):
    url = builtin_nameserver.url
    plain = bootstrap(url, "--pulsar-url", "pulsar://broker:6650", "--pulsar-tls-trust-certs", "/etc/oneos/ca.pem")
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1
    assert "is not pulsar+ssl://; give the broker's TLS URL" in plain.stderr
    relative = bootstrap(url, "--pulsar-url", "pulsar+ssl://broker:6651", "--pulsar-tls-trust-certs", "ca.pem")
    assert relative.returncode == 2 and relative.stderr.count("\n") == 1
    assert "pulsar.tlsTrustCertsFile" in relative.stderr, relative.stderr


@pytest.mark.skipif(REAL_CONSUL, reason="starts a Name Server of its own with ACLs")
def test_bootstrap_on_a_name_server_with_acls_writes_the_policies_and_opens_only_asking_to_join(tmp_path):
    write_secret(tmp_path / "management", MANAGEMENT)
    nameserver = NameServerProc(tmp_path / "ns", extra=["--acl", "--acl-initial-management-token-file",
                                                        str(tmp_path / "management")]).start()
    try:
        done = run_cli(["oneosctl", "bootstrap", "--pulsar-url", "pulsar://127.0.0.1:6651"],
                       env={"ONEOS_NAMESERVER": nameserver.url, "ONEOS_TOKEN": MANAGEMENT})
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == ("policies written: oneos-anonymous (given to the anonymous token: "
                                                "runtimes may ask to join), oneos-kernel, oneos-operator")
        # Without a token: the boot record reads, a join request writes, nothing else.
        plain = requests.Session()
        assert plain.get(f"{nameserver.url}/v1/kv/{state.BOOT}", timeout=5).status_code == 200
        assert plain.put(f"{nameserver.url}/v1/kv/{state.joinrequest_key('x')}", data=b"{}", timeout=5).json()
        assert plain.get(f"{nameserver.url}/v1/kv/{state.INIT}", timeout=5).status_code == 403
        assert plain.put(f"{nameserver.url}/v1/kv/{state.key_key('x')}", data=b"{}", timeout=5).status_code == 403
        # Run again, it changes nothing and says the same.
        again = run_cli(["oneosctl", "bootstrap", "--pulsar-url", "pulsar://127.0.0.1:6651"],
                        env={"ONEOS_NAMESERVER": nameserver.url, "ONEOS_TOKEN": MANAGEMENT})
        assert again.stdout.splitlines()[-1] == done.stdout.splitlines()[-1]
        anonymous = NameServer(nameserver.url, token=MANAGEMENT).acl_token_read(enrollment.ANONYMOUS_ACCESSOR)
        assert [p["Name"] for p in anonymous["Policies"]] == ["oneos-anonymous"]
    finally:
        nameserver.stop()
