#!/usr/bin/env bash
# Runs the examples of docs/integrations.md against a real sigil CA on loopback, each fed by
# `sigil agent` with 30-second certificates so that renewals happen while they run:
#   1. Go crypto/tls (docs/examples/go): server and client pick up renewals without a restart;
#   2. rustls (docs/examples/rustls): the same;
#   3. nginx: reloaded by the agent's --exec, serves the renewed certificate;
#   4. a revoked client certificate is refused by nginx, the Go server and the rustls server
#      once their agents have fetched the new CRLs.
# Needs cargo, curl, openssl, nginx and Go 1.21 or later ($GO, default Debian's 1.23 from
# bookworm-backports). Takes about two minutes. Exit status 0 when every check passed.
set -euo pipefail
PATH=$PATH:/usr/sbin
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
GO=${GO:-/usr/lib/go-1.23/bin/go}
work=$(mktemp -d)
pids=()

cleanup() {
  local pid
  if [ -s "$work/nginx/nginx.pid" ]; then kill -QUIT "$(cat "$work/nginx/nginx.pid")" 2>/dev/null || true; fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; for f in "$work"/*.log; do echo "--- $f" >&2; tail -20 "$f" >&2; done; exit 1; }
# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every half second.
wait_until() {
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || fail "$what"
    sleep 0.5
  done
}
serial_of() { openssl x509 -noout -serial -in "$1" | cut -d= -f2 | tr 'A-F' 'a-f' | sed 's/^0*//'; }

say "building sigil, the rustls example and the Go example"
cargo build -q --manifest-path "$repo/Cargo.toml" --bin sigil --example rustls_reload
target=${CARGO_TARGET_DIR:-$repo/target}
sigil=$target/debug/sigil
rustls_reload=$target/debug/examples/rustls_reload
(cd "$here/go" && GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod "$GO" build -o "$work/mtlsdemo" ./mtlsdemo)

say "starting the CA"
"$sigil" serve --data-dir "$work/ca" --listen 127.0.0.1:0 --addr-file "$work/addr" 2> "$work/serve.log" &
pids+=($!)
wait_until 60 "the CA did not start" test -s "$work/addr"
export SIGIL_CA="https://$(cat "$work/addr")" SIGIL_ROOT="$work/ca/root.crt" SIGIL_ADMIN_KEY_FILE="$work/ca/admin.key"

# agent NAME [flags]: a token for service NAME (name NAME.internal), and an agent keeping
# $work/NAME fresh with 30-second certificates, CRLs, and a 2-second poll.
agent() {
  local name=$1; shift
  (umask 077; "$sigil" token create --service "$name" --san "$name.internal" > "$work/$name.token")
  "$sigil" agent --out "$work/$name" --token-file "$work/$name.token" --ttl 30s --crl \
    --poll-interval 2s "$@" 2> "$work/$name.log" &
  pids+=($!)
}
agent orders
agent billing
wait_until 60 "the agents wrote no certificates" test -e "$work/orders/crls.pem" -a -e "$work/billing/crls.pem"

say "Go crypto/tls and rustls, 45 seconds of connections across renewals"
"$work/mtlsdemo" -server-dir "$work/orders" -client-dir "$work/billing" -server-name orders.internal \
  -rounds 10 -interval 5s -min-serials 2 > "$work/go.out" 2>&1 &
go_pid=$!
"$rustls_reload" "$work/orders" "$work/billing" orders.internal 10 5 > "$work/rustls.out" 2>&1 ||
  { cat "$work/rustls.out"; fail "rustls example"; }
wait "$go_pid" || { cat "$work/go.out"; fail "Go example"; }
cat "$work/go.out"
cat "$work/rustls.out"
grep -Eq 'server certificates seen: [2-9], client certificates seen: [2-9]' "$work/rustls.out" ||
  fail "rustls did not pick up renewals"

say "nginx, reloaded by the agent"
mkdir -p "$work/nginx/tmp"
agent web --exec "nginx -p $work/nginx -e $work/nginx/error.log -c $work/nginx/nginx.conf -s reload"
wait_until 60 "the web agent wrote no certificate" test -e "$work/web/crls.pem"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/nginx/nginx.conf" <<CONF
user root;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log info;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $work/nginx/tmp;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_certificate     $work/web/cert.pem;
    ssl_certificate_key $work/web/key.pem;
    ssl_verify_client on;
    ssl_client_certificate $work/web/ca.pem;
    ssl_verify_depth 2;
    ssl_crl $work/web/crls.pem;
    location / {
      default_type text/plain;
      return 200 "hello \$ssl_client_s_dn\n";
    }
  }
}
CONF
nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf"
call_nginx() {
  curl -sS -o "$work/nginx.body" -w '%{http_code}' --cacert "$work/web/ca.pem" \
    --cert "$work/billing/cert.pem" --key "$work/billing/key.pem" \
    --resolve "web.internal:$port:127.0.0.1" "https://web.internal:$port/"
}
served_serial() {
  openssl s_client -connect "127.0.0.1:$port" -servername web.internal \
    -cert "$work/billing/cert.pem" -key "$work/billing/key.pem" < /dev/null 2>/dev/null |
    openssl x509 -noout -serial | cut -d= -f2 | tr 'A-F' 'a-f' | sed 's/^0*//'
}
code=$(call_nginx)
[ "$code" = 200 ] || fail "nginx answered $code to a good client"
echo "nginx: $(cat "$work/nginx.body")"
first=$(serial_of "$work/web/cert.pem")
web_renewed() { [ "$(serial_of "$work/web/cert.pem")" != "$first" ]; }
wait_until 40 "the web certificate was not renewed" web_renewed
now_on_disk=$(serial_of "$work/web/cert.pem")
nginx_serves_disk() { [ "$(served_serial)" = "$(serial_of "$work/web/cert.pem")" ]; }
wait_until 10 "nginx still serves the old certificate" nginx_serves_disk
echo "nginx now serves $(served_serial) (was $first; on disk $now_on_disk)"

say "revoking the client's certificate"
revoked=$(serial_of "$work/billing/cert.pem")
curl -sS -o /dev/null --fail --cacert "$SIGIL_ROOT" -X POST \
  -H "Authorization: Bearer $(cat "$SIGIL_ADMIN_KEY_FILE")" \
  "$SIGIL_CA/v1/admin/certificates/$revoked/revoke"
echo "revoked $revoked"
crl_lists_revoked() {
  openssl crl -noout -text -in "$work/$1/crls.pem" 2>/dev/null | tr 'A-Z' 'a-z' | tr -d ' ' |
    grep -q "serialnumber:0*$revoked"
}
wait_until 30 "the web agent did not fetch the new CRL" crl_lists_revoked web
wait_until 30 "the orders agent did not fetch the new CRL" crl_lists_revoked orders
nginx_refuses() { [ "$(call_nginx)" = 400 ]; }
wait_until 10 "nginx still accepts the revoked client" nginx_refuses
echo "nginx: 400 for the revoked client"
[ "$(serial_of "$work/billing/cert.pem")" = "$revoked" ] || fail "the billing certificate changed"
"$work/mtlsdemo" -server-dir "$work/orders" -client-dir "$work/billing" -server-name orders.internal \
  -expect-refused || fail "the Go server accepted the revoked client"
"$rustls_reload" "$work/orders" "$work/billing" orders.internal 1 0 --expect-refused ||
  fail "the rustls server accepted the revoked client"
wait_until 40 "the billing agent did not log the refused renewal" \
  grep -q 'ERROR.*the CA refused the renewal.*is revoked' "$work/billing.log"
echo "billing agent: renewal refused as revoked, logged as an error; the files stay in place"

say "all integration examples passed"
