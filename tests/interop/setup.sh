#!/usr/bin/env bash
# Installs the real peers the interop suite drives: nginx, openssl, a Python venv with
# pkilint + cryptography, and Go 1.23 from bookworm-backports; then builds the Go peer.
# Idempotent: each step is skipped when its result is already there. Run as root (CI is).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
venv=${SIGIL_INTEROP_VENV:-/tmp/sigil-interop-venv}
bindir=${SIGIL_INTEROP_BIN:-/tmp/sigil-interop-bin}
go=/usr/lib/go-1.23/bin/go
sources=/etc/apt/sources.list.d/debian.sources
export DEBIAN_FRONTEND=noninteractive

# Debian's postinst would start nginx on port 80 when nothing forbids service starts;
# the suite runs its own nginx on loopback only, so forbid starts during our installs.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi

# 1. Debian packages. One apt-get update, and only when something is missing.
pkgs=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || pkgs+=(nginx-light)
command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
# The venv is made from Debian's python3 so its ssl module uses the system OpenSSL 3.
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || pkgs+=(python3 python3-venv)
if [ ${#pkgs[@]} -gt 0 ]; then
  apt-get update -q
  # nginx-light is bookworm's small build; fall back to the full package if it is gone.
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" \
    || apt-get install -y -q --no-install-recommends "${pkgs[@]/nginx-light/nginx}"
fi

# 2. Python venv with the linter and the CSR library.
if ! "$venv/bin/python" -c 'import pkilint, cryptography' >/dev/null 2>&1; then
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check pkilint cryptography
fi

# 3. Go 1.23 from bookworm-backports (Debian main has only 1.19). The suite is added to the
# existing main stanza (the one listing plain "bookworm"), so the mirror stays whatever
# this machine already uses.
if [ ! -x "$go" ]; then
  [ -f "$sources" ] || { echo "setup.sh: $sources not found (expected on Debian 12)" >&2; exit 1; }
  if ! grep -q '^Suites:.*bookworm-backports' "$sources"; then
    sed -i -E '/^Suites:.*[[:space:]]bookworm([[:space:]]|$)/ s/[[:space:]]*$/ bookworm-backports/' "$sources"
    grep -q '^Suites:.*bookworm-backports' "$sources" \
      || { echo "setup.sh: could not add bookworm-backports to $sources" >&2; exit 1; }
  fi
  apt-get update -q
  apt-get install -y -q -t bookworm-backports golang-1.23-go
fi

# 4. Build the Go peer offline from the standard library; caches live under /tmp.
mkdir -p "$bindir"
(cd "$here/go" && GOTOOLCHAIN=local GOPROXY=off GOFLAGS=-mod=mod \
  GOCACHE=/tmp/sigil-interop-gocache GOPATH=/tmp/sigil-interop-gopath \
  "$go" build -o "$bindir/peer" .)

echo "nginx:    $(command -v nginx || echo /usr/sbin/nginx)"
echo "openssl:  $(command -v openssl)"
echo "python:   $venv/bin/python ($here/python/peer.py)"
echo "pkilint:  $venv/bin/lint_pkix_cert ($here/pkilint.sh)"
echo "go:       $go"
echo "go peer:  $bindir/peer"
