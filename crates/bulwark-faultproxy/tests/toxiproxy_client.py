"""Drives a Bulwark fault proxy with toxiproxy-python, a Toxiproxy client from PyPI.

Run by tests/toxiproxy_client.rs with TOXIPROXY_PORT (the API port) and UPSTREAM (a
redis-server's host:port). Exits non-zero, with the failing assertion, if the server does
not behave as Toxiproxy does for this client.
"""

import os
import socket
import time

from toxiproxy import Toxiproxy
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

API_PORT = int(os.environ["TOXIPROXY_PORT"])
UPSTREAM = os.environ["UPSTREAM"]


def connect(listen, timeout=5.0):
    host, port = listen.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def ping(listen, timeout=5.0):
    """Sends an inline PING; returns (reply, seconds)."""
    s = connect(listen, timeout)
    try:
        start = time.monotonic()
        s.sendall(b"PING\r\n")
        reply = s.recv(64)
        return reply, time.monotonic() - start
    finally:
        s.close()


def expect(exception, action):
    try:
        action()
    except exception:
        return
    raise AssertionError("expected %s" % exception.__name__)


server = Toxiproxy()
server.update_api_consumer("127.0.0.1", API_PORT)
assert server.running()
assert b"version" in server.version()

proxy = server.create(upstream=UPSTREAM, name="redis_py", listen="127.0.0.1:0")
assert proxy.enabled is True
assert not proxy.listen.endswith(":0"), proxy.listen
assert ping(proxy.listen)[0] == b"+PONG\r\n"
assert list(server.proxies()) == ["redis_py"]
expect(ProxyExists, lambda: server.create(upstream=UPSTREAM, name="redis_py"))

# A latency toxic, seen by the client and felt on the wire.
proxy.add_toxic(type="latency", attributes={"latency": 300})
toxics = proxy.toxics()
assert list(toxics) == ["latency_downstream"], toxics
assert toxics["latency_downstream"].attributes == {"latency": 300, "jitter": 0}
reply, took = ping(proxy.listen)
assert reply == b"+PONG\r\n" and took >= 0.3, (reply, took)
expect(InvalidToxic, lambda: proxy.add_toxic(type="no_such_toxic"))
expect(ProxyExists, lambda: proxy.add_toxic(type="latency", attributes={"latency": 1}))
assert proxy.destroy_toxic("latency_downstream") is True
assert proxy.toxics() == {}
expect(NotFound, lambda: proxy.destroy_toxic("latency_downstream"))

# down(): the proxy refuses connections inside the block, and works again after it.
with proxy.down():
    assert server.get_proxy("redis_py").enabled is False
    expect(ConnectionRefusedError, lambda: connect(proxy.listen, 2.0))
assert ping(proxy.listen)[0] == b"+PONG\r\n"

# A one-way partition: requests are blackholed, no reply comes back.
proxy.add_toxic(type="timeout", stream="upstream", attributes={"timeout": 0})
s = connect(proxy.listen, 0.5)
s.sendall(b"PING\r\n")
expect(socket.timeout, lambda: s.recv(64))
s.close()

# reset() heals everything.
assert server.reset() is True
assert proxy.toxics() == {}
assert ping(proxy.listen)[0] == b"+PONG\r\n"

# The client's populate helper and destroy_all.
created = server.populate([{"name": "second", "upstream": UPSTREAM, "listen": "127.0.0.1:0"}])
assert [p.name for p in created] == ["second"]
assert sorted(server.proxies()) == ["redis_py", "second"]
server.destroy_all()
assert server.proxies() == {}
expect(NotFound, proxy.destroy)
expect(ConnectionRefusedError, lambda: connect(proxy.listen, 2.0))
print("toxiproxy-python: all checks passed")
