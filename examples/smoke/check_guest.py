#!/usr/bin/env python3
"""Smoke suite run inside the guest by vmharness; prints TAP on stdout."""

import os
import socket
import ssl
import threading

HOSTNAME = os.environ.get("VMHARNESS_HOSTNAME") or socket.getfqdn()
CERT, KEY = "/etc/vmharness/hostcert.pem", "/etc/vmharness/hostkey.pem"
checks = []


def check(name):
    def wrap(func):
        checks.append((name, func))
        return func
    return wrap


@check("the fixed hostname is a fully qualified name")
def _fqdn():
    assert "." in HOSTNAME, HOSTNAME


@check("the fixed hostname resolves inside the guest")
def _resolves():
    addr = socket.gethostbyname(HOSTNAME)
    assert addr.startswith("127."), addr


@check("a TLS service on the hostname verifies with the host certificate")
def _tls():
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(CERT, KEY)
    listener = socket.create_server((HOSTNAME, 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"hello from " + HOSTNAME.encode())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client_ctx = ssl.create_default_context()  # the system store, which trusts the test CA
    with socket.create_connection((HOSTNAME, port), timeout=10) as raw:
        with client_ctx.wrap_socket(raw, server_hostname=HOSTNAME) as tls:
            data = tls.recv(100)
            peer = tls.getpeercert()
    t.join(5)
    assert data.startswith(b"hello"), data
    names = [v for k, v in peer.get("subjectAltName", ()) if k == "DNS"]
    assert HOSTNAME in names, names


@check("a name the guest does not know does not verify")
def _wrong_name():
    ctx = ssl.create_default_context()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(CERT, KEY)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            server_ctx.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass

    threading.Thread(target=serve, daemon=True).start()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            ctx.wrap_socket(raw, server_hostname="not-the-host.example").close()
        except ssl.SSLCertVerificationError:
            return
    raise AssertionError("a certificate for another name was accepted")


@check("the results folder on the output disk is writable")
def _results_dir():
    path = os.path.join(os.environ["VMHARNESS_RESULTS_DIR"], "smoke.txt")
    with open(path, "w") as f:
        f.write("written by the smoke suite\n")


print(f"1..{len(checks)}")
failed = 0
for number, (name, func) in enumerate(checks, 1):
    try:
        func()
        print(f"ok {number} - {name}")
    except Exception as exc:  # report every check, whatever breaks
        failed += 1
        print(f"not ok {number} - {name}")
        print(f"  # {type(exc).__name__}: {exc}")
raise SystemExit(1 if failed else 0)
