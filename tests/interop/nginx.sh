#!/usr/bin/env bash
# Runs Debian's nginx as a real mTLS server for sigil's interop tests: client certificate
# required, verified against the bundle, and checked against the CRLs of the whole chain.
# usage: nginx.sh start --dir D --cert F --key F --ca F --crl F   (prints the port)
#        nginx.sh stop --dir D
# GET / answers 200 "ok <client subject DN, e.g. CN=svc>"; a refused client certificate
# gets nginx's HTTP 400 page, not a TLS alert. exit: 0 ok, 1 failure, 2 usage error
set -euo pipefail
PATH=$PATH:/usr/sbin # nginx lives in sbin, which a non-login PATH may lack
usage() { echo "usage: nginx.sh start --dir D --cert F --key F --ca F --crl F | nginx.sh stop --dir D" >&2; exit 2; }
[ $# -ge 1 ] || usage
cmd=$1; shift
dir='' cert='' key='' ca='' crl=''
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case "$1" in
    --dir) dir=$2 ;; --cert) cert=$2 ;; --key) key=$2 ;; --ca) ca=$2 ;; --crl) crl=$2 ;;
    *) usage ;;
  esac
  shift 2
done
[ -n "$dir" ] || usage

# running: prints the PID of the nginx master recorded in D, if it is still alive.
running() {
  local pid
  pid=$(cat "$dir/nginx.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && grep -q nginx "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
}

case "$cmd" in
start)
  [ -n "$cert" ] && [ -n "$key" ] && [ -n "$ca" ] && [ -n "$crl" ] || usage
  mkdir -p "$dir"
  dir=$(realpath "$dir")
  if pid=$(running); then echo "nginx.sh: nginx already running in $dir (pid $pid)" >&2; exit 1; fi
  # nginx resolves relative paths against its prefix, so hand it absolute ones.
  for v in cert key ca crl; do
    [ -r "${!v}" ] || { echo "nginx.sh: cannot read --$v ${!v}" >&2; exit 2; }
    printf -v "$v" '%s' "$(realpath "${!v}")"
  done
  mkdir -p "$dir/tmp"
  # The kernel picks a free port that we release for nginx to bind; another process
  # could take it in between, so a bind failure is retried with a new port.
  for attempt in 1 2 3; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat > "$dir/nginx.conf" <<CONF
# written by nginx.sh; root keeps file access simple (keys are 0600, owned by root)
user root;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log info;
events { worker_connections 64; }
http {
  access_log $dir/access.log;
  client_body_temp_path $dir/tmp;
  server {
    listen 127.0.0.1:$port ssl;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_verify_client on;
    ssl_client_certificate $ca;
    # leaf -> intermediate -> root needs depth 2; nginx's default of 1 would refuse it
    ssl_verify_depth 3;
    # nginx checks the whole chain: the file must hold the intermediate's and the root's CRL
    ssl_crl $crl;
    location / {
      default_type text/plain;
      return 200 "ok \$ssl_client_s_dn\n";
    }
  }
}
CONF
    # -e keeps even the errors logged before the config is read inside D.
    if nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" 2> "$dir/start.err"; then
      # the master writes its pid file just after daemonizing; wait for it
      for _ in $(seq 50); do running >/dev/null && { echo "$port"; exit 0; }; sleep 0.1; done
      echo "nginx.sh: nginx started but wrote no pid file" >&2; exit 1
    fi
    grep -q 'Address already in use' "$dir/start.err" || break
  done
  cat "$dir/start.err" >&2
  exit 1 ;;
stop)
  pid=$(running) || { echo "nginx.sh: no nginx running in $dir" >&2; exit 1; }
  kill -TERM "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.1; done
  echo "nginx.sh: nginx $pid did not stop" >&2; exit 1 ;;
*) usage ;;
esac
