"""Safe default egress, proved on test hosts only: the backend runs inside a network namespace the
test makes (tests/support/testnet.py), whose only way out is a second namespace holding a stand-in
public host, a private one, the metadata address, a shared-range one and a DNS server.

An isolated devbox reaches the stand-in public host, by address and by name, and not the link-local,
private, shared or host addresses; root inside the devbox cannot change that.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from mcp import Client
from support.mcp_client import MODES, call_ok, make_server, structured
from support.testnet import ADDRESSES, HOST_ADDRESS, Net, NetBackend, backend_in, in_netns, make_testnet

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and the egress rules need root")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    with make_testnet(tmp_path_factory.mktemp("testnet")) as made:
        yield made


@pytest.fixture(scope="module")
def backend(net: Net, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetBackend]:
    with backend_in(net, tmp_path_factory.mktemp("egress-data")) as running:
        yield running


@pytest.fixture(scope="module")
def sdk(backend: NetBackend):  # noqa: ANN201
    from runloop_api_client import Runloop

    client = Runloop(bearer_token=backend.api_key, base_url=backend.base_url, max_retries=0, timeout=120)
    yield client
    client.close()


def run(sdk, devbox_id: str, command: str) -> tuple[int, str]:  # noqa: ANN001
    done = sdk.devboxes.execute_sync(devbox_id, command=command)
    return done.exit_status or 0, (done.stdout or "") + (done.stderr or "")


def fetch(url: str) -> str:
    """A shell command printing the HTTP status of `url` (000: no connection), at most 5 seconds."""
    return f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' {url} 2>/dev/null; true"


@pytest.fixture(scope="module")
def devbox(sdk) -> Iterator[str]:  # noqa: ANN001
    box = sdk.devboxes.create_and_await_running(name="egress-default")
    assert box.status == "running", box
    yield box.id
    sdk.devboxes.shutdown(box.id)


def test_a_stand_in_public_host_answers_by_address_and_by_name(sdk, devbox: str) -> None:  # noqa: ANN001
    assert run(sdk, devbox, fetch(f"http://{ADDRESSES['public']}/"))[1] == "200"
    code, out = run(sdk, devbox, "curl -sS -m 5 http://public.test/")
    assert code == 0 and out == f"world {ADDRESSES['public']} public.test\n"  # DNS works, through the egress rules


@pytest.mark.parametrize("where", ["private", "metadata", "shared"])
def test_private_link_local_and_shared_addresses_are_refused(sdk, devbox: str, where: str) -> None:  # noqa: ANN001
    code, out = run(sdk, devbox, f"curl -sS -m 5 http://{ADDRESSES[where]}/")
    assert code == 7 and "Couldn't connect" in out, out  # refused at once (a reset), not a time-out (28)


def test_the_hosts_own_address_is_refused(sdk, devbox: str, net: Net) -> None:  # noqa: ANN001
    on_host = subprocess.run(
        [*in_netns(net.host), "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
         f"http://{HOST_ADDRESS}/"], capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert on_host.stdout == "200"  # the host's server is there...
    code, out = run(sdk, devbox, f"curl -sS -m 5 http://{HOST_ADDRESS}/")
    assert code == 7, out  # ...and out of the devbox's reach


def test_root_inside_the_devbox_cannot_undo_the_rules(sdk, devbox: str) -> None:  # noqa: ANN001
    metadata = ADDRESSES["metadata"]
    changes = (
        f"sudo ip route add {metadata}/32 dev tap0; sudo ip route replace default via 10.0.2.2 dev tap0; "
        f"sudo ip addr add 169.254.1.1/16 dev tap0; sudo ip route add 10.0.0.0/8 dev tap0; "
        f"sudo ip neigh flush all; ip route"
    )
    code, out = run(sdk, devbox, changes)
    assert "169.254.169.254 dev tap0" in out  # the devbox's own routes did change...
    for target in (metadata, ADDRESSES["private"], HOST_ADDRESS):
        assert run(sdk, devbox, fetch(f"http://{target}/"))[1] == "000", target  # ...and decide nothing
    assert run(sdk, devbox, fetch(f"http://{ADDRESSES['public']}/"))[1] == "200"


def test_host_mode_is_the_opt_out(sdk) -> None:  # noqa: ANN001
    box = sdk.devboxes.create_and_await_running(launch_parameters={"network_mode": "host"})
    try:
        assert run(sdk, box.id, fetch(f"http://{ADDRESSES['private']}/"))[1] == "200"
    finally:
        sdk.devboxes.shutdown(box.id)


# -- network policies: hostname allowlists through the proxy -------------------------------------


@pytest.fixture(scope="module")
def allowlisted(sdk) -> Iterator[tuple[str, str]]:  # noqa: ANN001
    policy = sdk.network_policies.create(
        name="allow-example", allowed_hostnames=["allowed.example", "*.allowed.example", "metadata.test"]
    )
    box = sdk.devboxes.create_and_await_running(launch_parameters={"network_policy_id": policy.id})
    assert box.status == "running", box
    yield policy.id, box.id
    sdk.devboxes.shutdown(box.id)
    sdk.network_policies.delete(policy.id)


def test_an_allowlisted_host_answers_through_the_proxy(sdk, allowlisted: tuple[str, str]) -> None:  # noqa: ANN001
    _, box = allowlisted
    assert run(sdk, box, "curl -sS -m 5 http://allowed.example/") == (0, f"world {ADDRESSES['allowed']} allowed.example\n")
    assert run(sdk, box, "curl -sS -m 5 http://api.allowed.example/")[1].startswith("world ")  # a *. wildcard
    code, out = run(sdk, box, "curl -sS -m 5 -k https://allowed.example/")  # CONNECT, checked by TLS server name
    assert (code, out) == (0, f"world {ADDRESSES['allowed']} allowed.example\n")


def test_another_host_is_refused_with_a_reason(sdk, allowlisted: tuple[str, str]) -> None:  # noqa: ANN001
    _, box = allowlisted
    code, out = run(sdk, box, "curl -sS -m 5 http://other.example/ -w ' %{http_code}'")
    assert out == "devbox network policy: other.example is not in the allowed_hostnames of the devbox's network policy\n 403"
    assert run(sdk, box, "curl -sS -m 5 -k https://other.example/")[0] != 0
    # An allowed name that resolves to a private or link-local address is refused too.
    assert "169.254.169.254, which is not a public address" in run(sdk, box, "curl -sS -m 5 http://metadata.test/")[1]


def test_a_forged_host_header_or_server_name_is_refused(sdk, allowlisted: tuple[str, str]) -> None:  # noqa: ANN001
    _, box = allowlisted
    out = run(sdk, box, "curl -sS -m 5 -H 'Host: other.example' http://allowed.example/")[1]
    assert "the Host header 'other.example' is not the request's host 'allowed.example'" in out
    sni = (
        "python3 - <<'PY'\n"
        "import socket, ssl\n"
        "s = socket.create_connection(('127.0.0.1', 3128), timeout=5)\n"
        "s.sendall(b'CONNECT allowed.example:443 HTTP/1.1\\r\\nHost: allowed.example:443\\r\\n\\r\\n')\n"
        "print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
        "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
        "try:\n"
        "    t = ctx.wrap_socket(s, server_hostname='other.example'); t.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n"
        "    print('answered', t.recv(100))\n"
        "except (OSError, ssl.SSLError) as e:\n"
        "    print('refused')\n"
        "PY"
    )
    assert run(sdk, box, sni)[1] == "HTTP/1.1 200 Connection established\nrefused\n"


def test_direct_connections_that_bypass_the_proxy_are_refused(sdk, allowlisted: tuple[str, str]) -> None:  # noqa: ANN001
    _, box = allowlisted
    for target in (ADDRESSES["allowed"], ADDRESSES["public"]):
        code, out = run(sdk, box, f"curl -sS -m 5 --noproxy '*' http://{target}/")
        assert code == 7 and "Couldn't connect" in out, out  # no route out at all: at once, not a time-out
    # Root inside cannot take the proxy's place or make a way out.
    out = run(sdk, box, "sudo python3 -c \"import socket; socket.socket().bind(('127.0.0.1', 3128))\" 2>&1 | tail -1")[1]
    assert "Address already in use" in out
    run(sdk, box, "sudo ip route add default dev lo; sudo ip link set lo down; sudo ip link set lo up")
    assert run(sdk, box, fetch(f"http://{ADDRESSES['public']}/").replace("curl", "curl --noproxy '*'"))[1] == "000"
    assert run(sdk, box, "curl -sS -m 5 http://allowed.example/")[0] == 0  # the proxy still serves


def test_an_update_reaches_a_running_devbox(sdk, allowlisted: tuple[str, str]) -> None:  # noqa: ANN001
    policy, box = allowlisted
    sdk.network_policies.update(policy, allowed_hostnames=["allowed.example", "*.allowed.example", "other.example"])
    try:
        assert run(sdk, box, "curl -sS -m 5 http://other.example/")[1] == f"world {ADDRESSES['other']} other.example\n"
    finally:
        sdk.network_policies.update(policy, allowed_hostnames=["allowed.example", "*.allowed.example", "metadata.test"])


def test_an_allow_all_policy_is_the_safe_default(sdk) -> None:  # noqa: ANN001
    policy = sdk.network_policies.create(name="everything", allow_all=True)
    box = sdk.devboxes.create_and_await_running(launch_parameters={"network_policy_id": policy.id})
    try:
        assert run(sdk, box.id, fetch(f"http://{ADDRESSES['public']}/"))[1] == "200"
        assert run(sdk, box.id, fetch(f"http://{ADDRESSES['metadata']}/"))[1] == "000"
        assert run(sdk, box.id, "echo ${http_proxy:-none}")[1] == "none\n"
    finally:
        sdk.devboxes.shutdown(box.id)
        sdk.network_policies.delete(policy.id)


# -- through a real MCP client (both eras) -----------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_an_agent_allowlists_a_host_and_reaches_only_it(backend: NetBackend, mode: str) -> None:
    async with Client(make_server(backend), mode=mode) as mcp:  # type: ignore[arg-type]
        default = structured(await call_ok(mcp, "create_devbox", {}))
        box = structured(await call_ok(mcp, "create_devbox", {"network_policy": ["allowed.example"]}))
        try:
            assert default["reach"] == "public internet only (no private, link-local or host addresses)"
            assert box["reach"].startswith("HTTP(S) via proxy to allowed.example only (policy np_")

            async def curl(devbox: str, url: str) -> str:
                done = await call_ok(mcp, "execute", {"devbox_id": devbox, "command": f"curl -sS -m 5 {url} 2>&1"})
                return structured(done)["stdout"]

            assert await curl(default["id"], f"http://{ADDRESSES['public']}/") == f"world {ADDRESSES['public']} {ADDRESSES['public']}\n"
            assert "Couldn't connect" in await curl(default["id"], f"http://{ADDRESSES['metadata']}/")
            assert await curl(box["id"], "http://allowed.example/") == f"world {ADDRESSES['allowed']} allowed.example\n"
            assert "not in the allowed_hostnames" in await curl(box["id"], "http://other.example/")
            assert "Couldn't connect" in await curl(box["id"], f"--noproxy '*' http://{ADDRESSES['allowed']}/")
        finally:
            for devbox in (default["id"], box["id"]):
                await call_ok(mcp, "shutdown_devbox", {"devbox_id": devbox})
