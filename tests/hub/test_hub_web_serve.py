"""``leapcore-hub serve --web-listen``: the real command, its address line, its refusals,
the warning for a page without TLS beyond loopback, and the page over the hub's TLS."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.parse
from pathlib import Path

from support.procs import TLS_H2, Env, env_fixture

__all__ = ["env_fixture"]


def test_bad_web_settings_are_usage_errors(env: Env) -> None:
    proc = env.run("leapcore-hub", "--web-listen", "nowhere", "--data-dir", str(env.hub_dir))
    assert proc.returncode == 2 and "listen address 'nowhere'" in proc.stderr
    assert not env.hub_dir.exists()  # refused before the database is made
    proc = env.run(
        "leapcore-hub", "--solo", "--web-listen", "127.0.0.1:0", "--data-dir", str(env.hub_dir)
    )
    assert proc.returncode == 2 and "--solo does not serve the web page" in proc.stderr


def test_a_page_beyond_loopback_without_tls_is_warned_about(env: Env) -> None:
    env.hub_flags = ["--web-listen", "0.0.0.0:0"]
    hub = env.start_hub()
    web = hub.line("leapcore-hub web page on ").split()[-1]
    assert web.startswith("http://0.0.0.0:")
    hub.logged("the web page listens on 0.0.0.0:0 without TLS")
    port = int(web.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 200 ")


def test_loopback_without_tls_is_not_warned_about(env: Env) -> None:
    env.hub_flags = ["--web-listen", "127.0.0.1:0", "--public-url", "https://hub.example:443"]
    hub = env.start_hub()
    web = hub.line("leapcore-hub web page on http://127.0.0.1:").split()[-1]
    assert "without TLS" not in hub.stderr()
    # The page's worker command names --public-url, not the listen address.
    conn = http.client.HTTPConnection(web.removeprefix("http://"), timeout=10)
    conn.request(
        "POST",
        "/api/sign-in",
        urllib.parse.urlencode({"token": env.token}),
        {"X-Leapcore-CSRF": "1", "Content-Type": "application/x-www-form-urlencoded"},
    )
    answer = conn.getresponse()
    assert answer.status == 200
    assert json.loads(answer.read())["hub_url"] == "https://hub.example:443"
    conn.close()


def test_the_page_uses_the_hubs_tls_and_a_secure_cookie(tmp_path: Path) -> None:
    env = Env(tmp_path, TLS_H2)
    try:
        env.hub_flags = ["--web-listen", "127.0.0.1:0"]
        hub = env.start_hub()
        web = hub.line("leapcore-hub web page on ").split()[-1]
        assert web.startswith("https://127.0.0.1:")
        port = int(web.rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=str(env.ca_file))
        context.set_alpn_protocols(["h2", "http/1.1"])  # the page speaks HTTP/1.1 only
        body = urllib.parse.urlencode({"token": env.token}).encode()
        request = (
            f"POST /api/sign-in HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "X-Leapcore-CSRF: 1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Origin: https://127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            assert sock.selected_alpn_protocol() == "http/1.1"
            sock.sendall(request)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head = reply.partition(b"\r\n\r\n")[0].decode()
        assert head.startswith("HTTP/1.1 200 ")
        (cookie,) = [line for line in head.split("\r\n") if line.startswith("Set-Cookie:")]
        assert cookie.endswith("; Path=/; HttpOnly; SameSite=Strict; Secure")
        # The page's command names the hub's own https URL.
        assert f'"hub_url": "{env.url}"' in reply.decode()
    finally:
        env.cleanup()
