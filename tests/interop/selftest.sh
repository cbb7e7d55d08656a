#!/usr/bin/env bash
# Proves the peers and wrappers here without sigil: an openssl-made PKI (mkpki.sh), each
# server (Go, Python, nginx) against each client (openssl s_client, Go, Python) with a
# good and a revoked client certificate, client-side CRL checks, CSRs of every key type,
# and pkilint.sh. Run setup.sh first. Prints one line per check and "N passed, N failed".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${SIGIL_INTEROP_VENV:-/tmp/sigil-interop-venv}
gopeer=${SIGIL_INTEROP_BIN:-/tmp/sigil-interop-bin}/peer
pypeer=("$venv/bin/python" "$here/python/peer.py")
t=$(mktemp -d /tmp/sigil-interop-selftest.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$here/nginx.sh" stop --dir "$t/nginx" 2>/dev/null || true
  rm -rf "$t"
}
trap cleanup EXIT
pass=0 fail=0
check() { # check WANT(ok|refused) NAME CMD...: run CMD, compare its outcome with WANT
  local want=$1 name=$2 got; shift 2
  if "$@" > "$t/out" 2>&1; then got=ok; else got=refused; fi
  if [ "$got" = "$want" ]; then pass=$((pass + 1)); echo "PASS $name ($got)"
  else fail=$((fail + 1)); echo "FAIL $name (wanted $want, got $got)"; sed 's/^/    /' "$t/out"; fi
}

"$here/mkpki.sh" "$t/pki" > /dev/null
cd "$t/pki"

# Servers start in this shell (not in $(...), whose pipe they would hold open) and
# record their port in port[NAME] once their port file appears.
declare -A port
wait_port() { # wait_port NAME
  for _ in $(seq 100); do [ -s "$t/$1.port" ] && { port[$1]=$(cat "$t/$1.port"); return; }; sleep 0.1; done
  echo "server $1 wrote no port:" >&2; cat "$t/$1.log" >&2; exit 1
}
start_peer() { # start_peer go|py NAME CERT KEY CRL [FLAGS...]
  local impl=$1 n=$2 c=$3 k=$4 crl=$5; shift 5
  local cmd=("$gopeer"); [ "$impl" = py ] && cmd=("${pypeer[@]}")
  "${cmd[@]}" server --cert "$c" --key "$k" --ca ca.pem --crl "$crl" --port-file "$t/$n.port" "$@" > "$t/$n.log" 2>&1 &
  pids+=($!)
  wait_port "$n"
}
# s_client's -cert sends only the first certificate: the intermediate goes in -cert_chain.
# TLS 1.3 rejections arrive after the handshake, so success is judged by the reply body.
s_client() { # s_client PORT NAME
  printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' |
    timeout 15 openssl s_client -connect "127.0.0.1:$1" -servername localhost -quiet \
      -cert "$2.pem" -cert_chain int.pem -key "$2.key" -CAfile ca.pem -verify_return_error 2>&1 |
    grep '^ok '
}
go_client() { "$gopeer" client --cert "$2.pem" --key "$2.key" --ca ca.pem --url "https://127.0.0.1:$1/" "${@:3}"; }
py_client() { "${pypeer[@]}" client --cert "$2.pem" --key "$2.key" --ca ca.pem --url "https://127.0.0.1:$1/" "${@:3}"; }

# 1. every server x every client x good/revoked client certificate
start_peer go go server.pem server.key crls.pem
start_peer py python server.pem server.key crls.pem
port[nginx]=$("$here/nginx.sh" start --dir "$t/nginx" --cert server.pem --key server.key --ca ca.pem --crl crls.pem)
for srv in go python nginx; do
  for cl in s_client go_client py_client; do
    check ok "$srv server, $cl, good client" "$cl" "${port[$srv]}" good
    check refused "$srv server, $cl, revoked client" "$cl" "${port[$srv]}" revoked
  done
done
check ok "go server answers 'ok <CN>'" grep -qx 'ok good-client' <(go_client "${port[go]}" good)
check ok "python server answers 'ok <CN>'" grep -qx 'ok good-client' <(py_client "${port[python]}" good)
check ok "nginx answers 'ok <DN>'" grep -qx 'ok CN=good-client' <(go_client "${port[nginx]}" good)

# 2. the Go server fails closed, and --crl-leaf-only narrows the check
start_peer go go_rootcrl server.pem server.key root-crl.crl
check refused "go server without the issuer's CRL refuses" go_client "${port[go_rootcrl]}" good
start_peer go go_leaf server.pem server.key int-crl.crl --crl-leaf-only
check ok "go server --crl-leaf-only with the intermediate CRL only" go_client "${port[go_leaf]}" good
check refused "go server --crl-leaf-only still refuses revoked" go_client "${port[go_leaf]}" revoked

# 3. clients check the server's certificate against the CRLs only with --crl
start_peer go revsrv server-revoked.pem server-revoked.key crls.pem
check ok "go client without --crl accepts a revoked server" go_client "${port[revsrv]}" good
check refused "go client --crl refuses a revoked server" go_client "${port[revsrv]}" good --crl crls.pem
check ok "go client --crl accepts a good server" go_client "${port[python]}" good --crl crls.pem
check ok "python client without --crl accepts a revoked server" py_client "${port[revsrv]}" good
check refused "python client --crl refuses a revoked server" py_client "${port[revsrv]}" good --crl crls.pem
check ok "python client --crl accepts a good server" py_client "${port[go]}" good --crl crls.pem
check refused "go client refuses a wrong server name" go_client "${port[go]}" good --server-name other.test
check refused "python client refuses a wrong server name" py_client "${port[go]}" good --server-name other.test

# 4. CSRs: self-signature valid, SANs present, key PKCS#8 and 0600
csr_ok() { # csr_ok PREFIX: verify PREFIX.csr and PREFIX.key
  openssl req -in "$1.csr" -noout -verify && openssl req -in "$1.csr" -noout -text | grep -q 'DNS:a.test, DNS:b.test' &&
    grep -q 'BEGIN PRIVATE KEY' "$1.key" && [ "$(stat -c %a "$1.key")" = 600 ]
}
for kt in p256 p384 ed25519 rsa2048 rsa3072 rsa4096; do
  check ok "go csr $kt" bash -c "umask 022 && '$gopeer' csr --key-type $kt --cn svc --dns a.test --dns b.test --key-out go-$kt.key --csr-out go-$kt.csr && $(declare -f csr_ok); csr_ok go-$kt"
  check ok "python csr $kt" bash -c "umask 022 && '${pypeer[0]}' '${pypeer[1]}' csr --key-type $kt --cn svc --dns a.test --dns b.test --key-out py-$kt.key --csr-out py-$kt.csr && $(declare -f csr_ok); csr_ok py-$kt"
done
check refused "go csr rejects an unknown key type" "$gopeer" csr --key-type dsa --cn x --key-out x.key --csr-out x.csr
check refused "python csr rejects an unknown key type" "${pypeer[@]}" csr --key-type dsa --cn x --key-out x.key --csr-out x.csr

# 5. pkilint.sh: the known false positive (localhost) is dropped, real findings are not
check ok "pkilint cert (localhost SAN ignored)" "$here/pkilint.sh" cert server.pem
check ok "pkilint cert chain file" "$here/pkilint.sh" cert good.pem
check ok "pkilint crl" "$here/pkilint.sh" crl int-crl.crl
check ok "pkilint arl" "$here/pkilint.sh" arl root-crl.crl
check ok "pkilint chain" "$here/pkilint.sh" chain int.pem good.pem
printf '%s\n' '[x]' 'subjectAltName=DNS:localhost,URI:spiffe://test.example/svc,DNS:bad_name..x' > bad.ext
openssl req -new -key good.key -subj /CN=bad | openssl x509 -req -CA int.pem -CAkey int.key \
  -set_serial 0x4001 -days 1 -extfile bad.ext -extensions x -out bad.pem 2>/dev/null
check refused "pkilint cert with a bad DNS name" "$here/pkilint.sh" cert bad.pem
check ok "pkilint reports only the bad DNS name" bash -c "'$here/pkilint.sh' cert bad.pem 2>/dev/null | grep -c . | grep -qx 1"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
