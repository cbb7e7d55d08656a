#!/usr/bin/env python3
"""A real Python mTLS peer for sigil's interoperability tests.

TLS uses only the standard library ssl module (OpenSSL underneath), configured the way a
careful Python service would: CERT_REQUIRED, the trust bundle and the PEM CRLs loaded
with load_verify_locations, and VERIFY_CRL_CHECK_CHAIN (or _LEAF) set. The csr
subcommand needs the `cryptography` package.

Exit codes: 0 success, 1 TLS/verification/HTTP failure, 2 bad usage or unreadable input.
"""
import argparse
import http.client
import http.server
import os
import socket
import ssl
import sys
import urllib.parse


class UsageError(Exception):
    """Caller's fault (exit 2), as opposed to a failure of the peer or its partner (exit 1)."""


def context(side, a):
    """Builds the SSL context shared by server and client; CRLs are checked when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        # cert.pem is leaf + intermediates; OpenSSL sends the whole chain to the peer.
        ctx.load_cert_chain(a.cert, a.key)
        ctx.load_verify_locations(cafile=a.ca)
        if a.crl:
            # OpenSSL's file lookup loads every X509 CRL block of the PEM file.
            ctx.load_verify_locations(cafile=a.crl)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"loading certificates: {e}") from e
    if a.crl:
        # CHECK_CHAIN needs a CRL from every issuer in the chain (the intermediate's for
        # the leaf, the root's for the intermediate): sigil's crls.pem holds both.
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF if a.crl_leaf_only else ssl.VERIFY_CRL_CHECK_CHAIN
    if a.x509_strict:
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


def common_name(cert):
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return ""


def serve(a):
    ctx = context("server", a)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/":
                self.send_error(404)
                return
            body = f"ok {common_name(self.connection.getpeercert())}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            sys.stderr.write(f"peer.py server: {self.address_string()} {fmt % args}\n")

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def finish_request(self, request, client_address):
            # Handshake in the connection's own thread, so one slow or bad client
            # cannot hold up the accept loop.
            request.settimeout(15)
            with ctx.wrap_socket(request, server_side=True) as tls:
                self.RequestHandlerClass(tls, client_address, self)
                # Send close_notify: without it OpenSSL clients report an unexpected EOF.
                try:
                    tls.unwrap()
                except OSError:
                    pass

        def handle_error(self, request, client_address):
            # A refused client is expected in these tests: one line, not a traceback.
            sys.stderr.write(f"peer.py server: {client_address[0]}:{client_address[1]}: {sys.exc_info()[1]}\n")

    host, _, port = a.listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--listen wants HOST:PORT, got {a.listen!r}")
    srv = Server((host.strip("[]"), int(port)), Handler)
    bound = srv.server_address[1]
    if a.port_file:
        # Write then rename, so a harness polling the file never reads a partial port.
        tmp = os.path.join(os.path.dirname(os.path.abspath(a.port_file)), "." + os.path.basename(a.port_file) + ".tmp")
        with open(tmp, "w") as f:
            f.write(f"{bound}\n")
        os.replace(tmp, a.port_file)
    sys.stderr.write(f"peer.py server: listening on {host}:{bound}\n")
    srv.serve_forever()


class Connection(http.client.HTTPSConnection):
    """HTTPS connection that may verify a name other than the URL's host."""

    def __init__(self, host, port, ctx, server_name):
        super().__init__(host, port, context=ctx, timeout=15)
        self._ctx, self._name = ctx, server_name or host

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._name)


def client(a):
    ctx = context("client", a)
    url = urllib.parse.urlsplit(a.url)
    if url.scheme != "https" or not url.hostname:
        raise UsageError(f"--url must be https://HOST:PORT/..., got {a.url!r}")
    conn = Connection(url.hostname, url.port or 443, ctx, a.server_name)
    # Under TLS 1.3 the server refuses our certificate after the handshake: the error
    # only shows up when we read the response, so always read it.
    conn.request("GET", url.path or "/", headers={"Connection": "close"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    sys.stdout.write(body.decode(errors="replace"))
    if resp.status != 200:
        raise ConnectionError(f"HTTP status {resp.status} {resp.reason}")


def csr(a):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.x509.oid import NameOID

    kinds = {
        "p256": (lambda: ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()),
        "p384": (lambda: ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()),
        "ed25519": (ed25519.Ed25519PrivateKey.generate, None),  # Ed25519 signs without a separate hash
        "rsa2048": (lambda: rsa.generate_private_key(65537, 2048), hashes.SHA256()),
        "rsa3072": (lambda: rsa.generate_private_key(65537, 3072), hashes.SHA256()),
        "rsa4096": (lambda: rsa.generate_private_key(65537, 4096), hashes.SHA256()),
    }
    make, digest = kinds[a.key_type]
    key = make()
    req = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, a.cn)]))
    if a.dns:
        req = req.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in a.dns]), critical=False)
    req = req.sign(key, digest)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Create 0600 and re-apply it: os.open's mode is masked by umask and ignored for an existing file.
    fd = os.open(a.key_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(pem)
    with open(a.csr_out, "wb") as f:
        f.write(req.public_bytes(serialization.Encoding.PEM))


def parser():
    p = argparse.ArgumentParser(prog="peer.py", description="mTLS peer for sigil interop tests")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, need_crl in (("server", True), ("client", False)):
        s = sub.add_parser(name)
        s.add_argument("--cert", required=True, help="certificate chain PEM, leaf first")
        s.add_argument("--key", required=True, help="private key PEM")
        s.add_argument("--ca", required=True, help="trust bundle PEM")
        s.add_argument("--crl", required=need_crl, help="PEM file with X509 CRL blocks")
        s.add_argument("--crl-leaf-only", action="store_true", help="check only the leaf against CRLs")
        s.add_argument("--x509-strict", action="store_true", help="set VERIFY_X509_STRICT (Python 3.13's default)")
    s = sub.choices["server"]
    s.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to bind")
    s.add_argument("--port-file", help="write the bound port here")
    s = sub.choices["client"]
    s.add_argument("--url", required=True, help="https URL to GET")
    s.add_argument("--server-name", help="name to verify instead of the URL host")
    s = sub.add_parser("csr")
    s.add_argument("--key-type", default="p256",
                   choices=["p256", "p384", "ed25519", "rsa2048", "rsa3072", "rsa4096"])
    s.add_argument("--cn", required=True)
    s.add_argument("--dns", action="append", default=[], help="DNS subjectAltName (repeatable)")
    s.add_argument("--key-out", required=True, help="PKCS#8 PEM key output (mode 0600)")
    s.add_argument("--csr-out", required=True, help="PEM CSR output")
    return p


def main():
    a = parser().parse_args()  # argparse exits 2 on bad usage
    try:
        {"server": serve, "client": client, "csr": csr}[a.cmd](a)
    except UsageError as e:
        sys.stderr.write(f"peer.py {a.cmd}: {e}\n")
        return 2
    except (OSError, ssl.SSLError, http.client.HTTPException) as e:
        sys.stderr.write(f"peer.py {a.cmd}: {type(e).__name__}: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
