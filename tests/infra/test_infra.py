"""Tests of the test infrastructure itself, against real mosquitto processes.

Every broker here is started by the test on free loopback ports with its own config;
the system broker on 127.0.0.1:1883 is never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID

from tests.infra import (
    CertBundle,
    Collector,
    MosquittoBroker,
    MosquittoConfig,
    MosquittoError,
    MosquittoFactory,
    TcpProxyFactory,
    client_ssl_context,
    collect,
    hrv_broker,
    hrv_config,
    make_certs,
    mosquitto_broker,
    mosquitto_factory,
    mqtt_certs,
    reason_value,
    subscriber,
    tcp_proxy_factory,
)
from tests.infra.mosquitto import (
    SYSTEM_BROKER_PORT,
    free_port,
    tls_handshake_ok,
    write_password_file,
)

# The fixtures are imported to be used by name as test arguments.
__all__ = ["hrv_broker", "mosquitto_broker", "mosquitto_factory", "mqtt_certs", "tcp_proxy_factory"]

BEATS = "hrv/v1/{}/beats"


def _topics_of(messages: list[aiomqtt.Message]) -> list[str]:
    return [m.topic.value for m in messages]


def _has(topic: str, payload: bytes | None = None) -> Callable[[list[aiomqtt.Message]], bool]:
    def check(messages: list[aiomqtt.Message]) -> bool:
        return any(
            m.topic.value == topic and (payload is None or m.payload == payload) for m in messages
        )

    return check


# -- certificates -------------------------------------------------------------------------


def test_certs_chain_and_names(tmp_path: Path) -> None:
    bundle = make_certs(tmp_path / "c", clients=["p1"])
    ca = x509.load_pem_x509_certificate(bundle.ca_cert.read_bytes())
    wrong = x509.load_pem_x509_certificate(bundle.wrong_ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(bundle.server_cert.read_bytes())
    client = x509.load_pem_x509_certificate(bundle.clients["p1"].cert.read_bytes())
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    with pytest.raises(InvalidSignature):  # same subject name, another key
        server.verify_directly_issued_by(wrong)
    san = server.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert oct(bundle.server_key.stat().st_mode & 0o777) == "0o600"


# -- broker life cycle ------------------------------------------------------------------


def test_publish_subscribe_qos1(mosquitto_broker: MosquittoBroker) -> None:
    b = mosquitto_broker
    assert b.port != SYSTEM_BROKER_PORT
    assert b.url() == f"mqtt://127.0.0.1:{b.port}"

    async def main() -> list[aiomqtt.Message]:
        async with subscriber(b.url(), [BEATS.format("+")]) as sub:
            async with b.client() as pub:
                for i in range(3):
                    await pub.publish(BEATS.format("p1"), f"beat {i}".encode(), qos=1)
            return await sub.wait(3, timeout=10)

    got = asyncio.run(main())
    assert [m.payload for m in got] == [b"beat 0", b"beat 1", b"beat 2"]
    assert all(m.qos == 1 for m in got)


def test_stop_leaves_no_process_and_start_failure_shows_log(
    mosquitto_factory: MosquittoFactory,
) -> None:
    b = mosquitto_factory()
    pid = b.pid
    assert pid is not None
    b.stop()
    assert not b.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    b.stop()  # idempotent

    bad = mosquitto_factory(MosquittoConfig(extra=["no_such_option 1"]), start=False)
    with pytest.raises(MosquittoError, match="no_such_option"):
        bad.start()
    assert not bad.running


def test_pause_and_resume(mosquitto_factory: MosquittoFactory) -> None:
    b = mosquitto_factory()

    async def connect(timeout: float) -> None:
        async with b.client(timeout=timeout):
            pass

    b.pause()
    # The kernel still completes the TCP handshake, but nobody answers CONNECT.
    with pytest.raises(aiomqtt.MqttError, match="timed out"):
        asyncio.run(connect(1.0))
    b.resume()
    asyncio.run(connect(10.0))
    b.pause()
    b.stop()  # a paused broker stops too (SIGCONT before SIGTERM)
    assert not b.running


def test_restart_keeps_ports_retained_and_queued_messages(
    mosquitto_factory: MosquittoFactory,
) -> None:
    b = mosquitto_factory(hrv_config())
    port = b.port
    status = "hrv/v1/p1/status"

    async def offline_subscriber() -> None:
        # A persistent MQTT v5 session: subscribe, then go away.
        sess = b.client("admin", identifier="observer", session_expiry=3600)
        async with sess:
            await sess.subscribe(BEATS.format("p1"), qos=1)

    async def publish(payloads: list[bytes]) -> None:
        async with b.client("p1", identifier="agent-p1") as pub:
            await pub.publish(status, b"online", qos=1, retain=True)
            for p in payloads:
                await pub.publish(BEATS.format("p1"), p, qos=1)

    async def come_back(n: int) -> list[aiomqtt.Message]:
        # Same client id, clean_start False: no new SUBSCRIBE, the session has it.
        sess = b.client("admin", identifier="observer", session_expiry=3600)
        return await collect(sess, [], n, timeout=10)

    asyncio.run(offline_subscriber())
    asyncio.run(publish([b"a1", b"a2", b"a3"]))
    b.restart()  # SIGTERM: mosquitto saves its database
    assert b.port == port
    assert [m.payload for m in asyncio.run(come_back(3))] == [b"a1", b"a2", b"a3"]

    # The same after a crash, once the last message is on disk.
    asyncio.run(publish([b"k1", b"k2"]))
    b.wait_persisted(b"k2")
    b.restart(hard=True)  # SIGKILL
    assert b.port == port
    assert [m.payload for m in asyncio.run(come_back(2))] == [b"k1", b"k2"]

    retained = asyncio.run(collect(b.url("admin"), [status], 1, password=b.password("admin")))
    assert [(m.payload, m.retain) for m in retained] == [(b"online", True)]
    assert b.starts == 3


# -- authentication and TLS -------------------------------------------------------------


def test_tls_right_ca_works_wrong_ca_fails(hrv_broker: MosquittoBroker) -> None:
    b = hrv_broker
    assert b.url("p1", tls=True) == f"mqtts://p1@127.0.0.1:{b.tls_port}"
    assert b.certs is not None

    async def roundtrip() -> list[aiomqtt.Message]:
        async with subscriber(
            b.url("admin", tls=True),
            [BEATS.format("p1")],
            password=b.password("admin"),
            ca_file=b.ca_file,
        ) as sub:
            async with b.client("p1", tls=True) as pub:
                await pub.publish(BEATS.format("p1"), b"over tls", qos=1)
            return await sub.wait(1)

    assert [m.payload for m in asyncio.run(roundtrip())] == [b"over tls"]

    wrong_ca_file = b.certs.wrong_ca_cert

    async def wrong_ca() -> None:
        ctx = client_ssl_context(wrong_ca_file)
        async with b.client("p1", tls=True, tls_context=ctx):
            pass

    with pytest.raises(aiomqtt.MqttError) as err:
        asyncio.run(wrong_ca())
    assert "certificate verify failed" in str(err.value)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_requires_version_1_2(hrv_broker: MosquittoBroker) -> None:
    b = hrv_broker
    assert tls_handshake_ok(b, client_ssl_context(b.ca_file))
    assert tls_handshake_ok(
        b, client_ssl_context(b.ca_file, maximum_version=ssl.TLSVersion.TLSv1_2)
    )
    old = client_ssl_context(b.ca_file, maximum_version=ssl.TLSVersion.TLSv1_1)
    # OpenSSL may refuse TLS 1.1 on the client side already (security level); either way
    # no TLS 1.1 session comes up.
    assert not tls_handshake_ok(b, old)


def test_client_certificate_required(
    mosquitto_factory: MosquittoFactory, mqtt_certs: CertBundle
) -> None:
    b = mosquitto_factory(
        MosquittoConfig(tls=True, plain=False, certs=mqtt_certs, require_client_certificate=True)
    )
    with pytest.raises(MosquittoError):
        _ = b.port  # TLS only
    with_cert = client_ssl_context(b.ca_file, client=mqtt_certs.clients["p1"])
    assert tls_handshake_ok(b, with_cert)

    async def connect(ctx: ssl.SSLContext, timeout: float) -> None:
        async with aiomqtt.Client(b.host, b.tls_port, tls_context=ctx, timeout=timeout):
            pass

    asyncio.run(connect(with_cert, 10))
    # With TLS 1.3 the broker rejects the missing certificate after the client's side of
    # the handshake has completed: the client sees no CONNACK (or a reset).
    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(connect(client_ssl_context(b.ca_file), 2))


def test_wrong_password_and_anonymous_refused(hrv_broker: MosquittoBroker) -> None:
    b = hrv_broker

    async def connect(**kwargs: Any) -> None:
        async with aiomqtt.Client(b.host, b.port, timeout=5, **kwargs):
            pass

    for kwargs in (
        {"username": "p1", "password": "not-the-password"},
        {"username": "p1", "password": "x", "protocol": aiomqtt.ProtocolVersion.V5},
        {},  # anonymous
    ):
        with pytest.raises(aiomqtt.MqttCodeError) as err:
            asyncio.run(connect(**kwargs))
        assert err.value.rc is not None
        # v3.1.1: 4 bad user name or password, 5 not authorised; v5: 134, 135.
        assert reason_value(err.value.rc) in (4, 5, 134, 135)
        assert any(s in str(err.value).lower() for s in ("not author", "bad user name"))
    asyncio.run(connect(username="p1", password=b.password("p1")))


def test_password_file_written_without_mosquitto_passwd(
    mosquitto_factory: MosquittoFactory,
) -> None:
    cfg = MosquittoConfig(users={"alice": "s3cret:with colon"})
    b = mosquitto_factory(cfg, start=False)
    write_password_file(b.password_file, {"alice": "s3cret:with colon"}, use_mosquitto_passwd=False)
    assert b.password_file.read_text().startswith("alice:$7$101$")
    b.start()

    async def main() -> None:
        async with b.client("alice") as c:
            await c.publish("x", b"y", qos=1)
        with pytest.raises(aiomqtt.MqttCodeError):
            async with b.client("alice", password="wrong"):
                pass

    asyncio.run(main())


# -- ACL ------------------------------------------------------------------------------------


def test_acl_patient_writes_only_its_own_topics(hrv_broker: MosquittoBroker) -> None:
    b = hrv_broker

    async def main() -> list[aiomqtt.Message]:
        async with subscriber(b.url("admin"), ["hrv/v1/#"], password=b.password("admin")) as sub:
            async with b.client("p1") as p1:
                # Denied: mosquitto drops it silently (with a PUBACK), so publish the
                # allowed marker on the same connection after it: the broker handles
                # them in order, and the marker's arrival means the other was judged.
                await p1.publish(BEATS.format("p2"), b"forged", qos=1)
                await p1.publish("hrv/v1/p2/alerts", b"forged alert", qos=1)
                await p1.publish(BEATS.format("p1"), b"marker", qos=1)
            return await sub.wait(until=_has(BEATS.format("p1"), b"marker"))

    got = asyncio.run(main())
    assert [(m.topic.value, m.payload) for m in got] == [(BEATS.format("p1"), b"marker")]


def test_acl_therapist_reads_only_and_server_reads_and_alerts(hrv_broker: MosquittoBroker) -> None:
    b = hrv_broker

    async def main() -> tuple[list[str], list[str], list[str], list[str]]:
        async with (
            subscriber(b.url("admin"), ["hrv/v1/#"], password=b.password("admin")) as adm,
            subscriber(b.url("t1"), ["hrv/v1/#"], password=b.password("t1")) as ther,
            subscriber(
                b.client("server", identifier="server-1"), ["$share/hrvstream/hrv/v1/+/beats"]
            ) as srv,
            subscriber(b.url("p1"), ["hrv/v1/+/alerts"], password=b.password("p1")) as pat,
        ):
            async with b.client("t1") as t1:
                # A therapist's publish is dropped; its PUBACK means the broker handled it,
                # so a marker sent after it, on any connection, arrives after it would have.
                await t1.publish("hrv/v1/p1/alerts", b"from therapist", qos=1)
            async with b.client("server") as server:
                await server.publish("hrv/v1/p2/alerts", b"for p2", qos=1)
                await server.publish("hrv/v1/p1/alerts", b"for p1", qos=1)
            async with b.client("p1") as p1:
                await p1.publish(BEATS.format("p1"), b"marker", qos=1)
            done = _has(BEATS.format("p1"), b"marker")
            await adm.wait(until=done)
            await ther.wait(until=done)
            await srv.wait(until=done)
            await pat.wait(until=_has("hrv/v1/p1/alerts"))
            # The patient's subscription to p2's alerts was granted (mosquitto 2.0 checks
            # read access per message): p2's alert, sent before p1's, must not be there.
            return adm.topics, ther.topics, srv.topics, pat.topics

    adm, ther, srv, pat = asyncio.run(main())
    assert adm == ["hrv/v1/p2/alerts", "hrv/v1/p1/alerts", BEATS.format("p1")]
    assert ther == adm  # therapists read everything under hrv/v1
    assert srv == [BEATS.format("p1")]  # shared subscription of the server
    assert pat == ["hrv/v1/p1/alerts"]


def test_message_size_limit_disconnects(mosquitto_factory: MosquittoFactory) -> None:
    b = mosquitto_factory(MosquittoConfig(max_packet_size=1024))

    async def main() -> list[aiomqtt.Message]:
        async with subscriber(b.url(), ["t/#"]) as sub:
            async with b.client() as c:
                # mosquitto disconnects the client; aiomqtt 2.5 only notices the missing
                # PUBACK.
                with pytest.raises(aiomqtt.MqttError):
                    await c.publish("t/big", b"x" * 4000, qos=1, timeout=1)
            async with b.client() as c:
                await c.publish("t/small", b"x" * 100, qos=1)
            return await sub.wait(until=_has("t/small"))

    assert _topics_of(asyncio.run(main())) == ["t/small"]
    assert "oversize packet" in b.log_path.read_text()


# -- TCP proxy --------------------------------------------------------------------------


def test_proxy_cut_drops_connections_and_restore_reconnects(
    mosquitto_broker: MosquittoBroker, tcp_proxy_factory: TcpProxyFactory
) -> None:
    b = mosquitto_broker
    proxy = tcp_proxy_factory(b)
    assert proxy.url() == f"mqtt://127.0.0.1:{proxy.port}"

    async def main() -> None:
        async with subscriber(proxy.url(), ["t/#"]) as sub:
            async with b.client() as direct:
                await direct.publish("t/1", b"before", qos=1)
            assert _topics_of(await sub.wait(1)) == ["t/1"]
            assert proxy.active_connections == 1

            proxy.cut()
            await sub.wait(until=lambda _: False, timeout=10)  # returns on disconnection
            assert isinstance(sub.error, aiomqtt.MqttError)
            assert proxy.active_connections == 0
            # While cut, new connections are closed right after the accept.
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client(proxy.host, proxy.port, timeout=1):
                    pass

        proxy.restore()
        again = aiomqtt.Client(proxy.host, proxy.port, protocol=aiomqtt.ProtocolVersion.V5)
        async with subscriber(again, ["t/#"]) as sub:
            async with b.client() as direct:
                await direct.publish("t/2", b"after", qos=1)
            assert _topics_of(await sub.wait(1)) == ["t/2"]

    asyncio.run(main())


def test_proxy_stall_holds_traffic_until_restore(
    hrv_broker: MosquittoBroker, tcp_proxy_factory: TcpProxyFactory
) -> None:
    b = hrv_broker
    proxy = tcp_proxy_factory(b, tls=True)  # TLS passes through untouched

    async def main() -> tuple[list[str], list[bytes]]:
        async with subscriber(b.url("admin"), ["hrv/v1/#"], password=b.password("admin")) as sub:
            agent = aiomqtt.Client(
                proxy.host,
                proxy.port,
                username="p1",
                password=b.password("p1"),
                protocol=aiomqtt.ProtocolVersion.V5,
                tls_context=client_ssl_context(b.ca_file),
            )
            async with agent:
                proxy.stall()
                with pytest.raises(aiomqtt.MqttError, match="timed out"):
                    await agent.publish(BEATS.format("p1"), b"stalled", qos=1, timeout=1)
                async with b.client("p1") as direct:
                    await direct.publish("hrv/v1/p1/status", b"marker", qos=1)
                during = await sub.wait(until=_has("hrv/v1/p1/status"))
                proxy.restore()
                # The held PUBLISH is delivered now, on the same TCP connection.
                await sub.wait(until=_has(BEATS.format("p1"), b"stalled"))
                await agent.publish(BEATS.format("p1"), b"after", qos=1, timeout=10)
            after = await sub.wait(until=_has(BEATS.format("p1"), b"after"))
            return _topics_of(during), [m.payload for m in after]

    during, payloads = asyncio.run(main())
    assert during == ["hrv/v1/p1/status"]
    assert payloads == [b"marker", b"stalled", b"after"]


def test_proxy_forwards_to_a_restarted_broker(
    mosquitto_broker: MosquittoBroker, tcp_proxy_factory: TcpProxyFactory
) -> None:
    b = mosquitto_broker
    proxy = tcp_proxy_factory(b)
    b.kill()

    async def connect() -> None:
        async with aiomqtt.Client(proxy.host, proxy.port, timeout=2) as c:
            await c.publish("t", b"x", qos=1)

    with pytest.raises(aiomqtt.MqttError):
        asyncio.run(connect())
    b.start()
    asyncio.run(connect())


def test_free_ports_are_free_and_not_the_system_broker() -> None:
    ports = {free_port() for _ in range(5)}
    assert SYSTEM_BROKER_PORT not in ports
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))  # still free


def test_reload_disconnects_a_revoked_user(hrv_broker: MosquittoBroker) -> None:
    b = hrv_broker
    assert b.config.users is not None
    remaining = {u: p for u, p in b.config.users.items() if u != "p2"}

    async def main() -> None:
        async with subscriber(b.url("p2"), ["hrv/v1/p2/alerts"], password=b.password("p2")) as sub:
            write_password_file(b.password_file, remaining)
            await asyncio.to_thread(b.reload)
            await sub.wait(until=lambda _: False, timeout=10)  # returns on disconnection
            assert isinstance(sub.error, aiomqtt.MqttError)
        with pytest.raises(aiomqtt.MqttCodeError):
            async with b.client("p2"):
                pass
        async with b.client("p1"):
            pass

    asyncio.run(main())


# -- the deployment's broker configuration ----------------------------------------------

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"


def _deploy_template() -> str:
    """deploy/mosquitto/mosquitto.conf with its paths and port pointed at a test dir."""
    text = (DEPLOY / "mosquitto.conf").read_text(encoding="utf-8")
    replacements = {
        "/etc/mosquitto/hrvstream/": "{dir}/",
        "/etc/mosquitto/certs/": "{dir}/certs/",
        "persistence_location /var/lib/mosquitto/": "persistence_location {dir}/persistence",
        "log_dest file /var/log/mosquitto/mosquitto.log": "log_dest stderr",
        "listener 8883\n": "listener {tls_port} 127.0.0.1\n",
    }
    for old, new in replacements.items():
        assert old in text, f"deploy/mosquitto/mosquitto.conf no longer has {old!r}"
        text = text.replace(old, new)
    return text


def test_deploy_config_and_acl_example(mosquitto_factory: MosquittoFactory) -> None:
    names = ["p-7f3a", "p-19c2", "therapist-anna", "hrvstream-server"]
    users = {n: f"pw-{n}" for n in names}
    acl = (DEPLOY / "acl.example").read_text(encoding="utf-8")
    b = mosquitto_factory(
        MosquittoConfig(users=users, acl=acl, tls=True, plain=False, template=_deploy_template())
    )
    assert tls_handshake_ok(b, client_ssl_context(b.ca_file))
    tls12 = client_ssl_context(b.ca_file, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert tls_handshake_ok(b, tls12)

    def sub(user: str, topic: str) -> contextlib.AbstractAsyncContextManager[Collector]:
        url = b.url(user, tls=True)
        return subscriber(url, [topic], password=users[user], ca_file=b.ca_file)

    async def main() -> dict[str, list[str]]:
        async with (
            sub("hrvstream-server", "$share/hrvstream/hrv/v1/#") as server,
            sub("therapist-anna", "hrv/v1/#") as therapist,
            sub("p-7f3a", "hrv/v1/+/alerts") as patient,
        ):
            async with b.client("p-7f3a", tls=True) as p:
                await p.publish("hrv/v1/p-19c2/beats", b"forged", qos=1)  # denied
                await p.publish("hrv/v1/p-7f3a/beats", b"own", qos=1)
            async with b.client("therapist-anna", tls=True) as t:
                await t.publish("hrv/v1/p-7f3a/alerts", b"from therapist", qos=1)  # denied
            async with b.client("hrvstream-server", tls=True) as s:
                await s.publish("hrv/v1/p-7f3a/beats", b"server forging beats", qos=1)  # denied
                await s.publish("hrv/v1/p-19c2/alerts", b"alert p-19c2", qos=1)
                await s.publish("hrv/v1/p-7f3a/alerts", b"alert p-7f3a", qos=1)
            done = _has("hrv/v1/p-7f3a/alerts")
            for c in (server, therapist, patient):
                await c.wait(until=done)
            return {
                "server": server.topics,
                "therapist": therapist.topics,
                "patient": patient.topics,
            }

    seen = asyncio.run(main())
    expected = ["hrv/v1/p-7f3a/beats", "hrv/v1/p-19c2/alerts", "hrv/v1/p-7f3a/alerts"]
    assert seen["server"] == expected
    assert seen["therapist"] == expected
    assert seen["patient"] == ["hrv/v1/p-7f3a/alerts"]
