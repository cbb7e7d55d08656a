#!/usr/bin/env bash
# Makes a throwaway PKI with the openssl CLI, shaped like sigil's output, so the peers
# and wrappers here can be tested without the CA: root -> intermediate -> leaves, one
# client and one server leaf revoked, and crls.pem = intermediate CRL + root CRL.
# usage: mkpki.sh DIR
set -euo pipefail
d=${1:?usage: mkpki.sh DIR}
mkdir -p "$d" && cd "$d"

ext() { # ext NAME LINES... : write an extension section file
  local n=$1; shift; printf '%s\n' "[$n]" "$@" > "$n.ext"
}
ext ca basicConstraints=critical,CA:TRUE keyUsage=critical,keyCertSign,cRLSign \
  subjectKeyIdentifier=hash authorityKeyIdentifier=keyid:always
ext int basicConstraints=critical,CA:TRUE,pathlen:0 keyUsage=critical,keyCertSign,cRLSign \
  subjectKeyIdentifier=hash authorityKeyIdentifier=keyid:always
leafext() { # leafext NAME SAN
  ext "$1" basicConstraints=critical,CA:FALSE keyUsage=critical,digitalSignature \
    extendedKeyUsage=serverAuth,clientAuth subjectKeyIdentifier=hash \
    authorityKeyIdentifier=keyid:always "subjectAltName=$2"
}
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; chmod 600 "$1.key"; }

key root
openssl req -x509 -new -key root.key -subj /CN=Test-Root -days 30 -set_serial 0x1001 \
  -extensions ca -config ca.ext -out root.pem
key int
openssl req -new -key int.key -subj /CN=Test-Intermediate |
  openssl x509 -req -CA root.pem -CAkey root.key -set_serial 0x2001 -days 20 \
    -extfile int.ext -extensions int -out int.pem 2>/dev/null

serial=0x3000
leaf() { # leaf NAME CN SAN: key + cert.pem-style chain NAME.pem (leaf + intermediate)
  key "$1"; leafext "$1" "$3"; serial=$((serial + 1))
  openssl req -new -key "$1.key" -subj "/CN=$2" |
    openssl x509 -req -CA int.pem -CAkey int.key -set_serial "$serial" -days 10 \
      -extfile "$1.ext" -extensions "$1" -out "$1.leaf.pem" 2>/dev/null
  cat "$1.leaf.pem" int.pem > "$1.pem"
}
leaf server localhost DNS:localhost,IP:127.0.0.1
leaf server-revoked localhost DNS:localhost,IP:127.0.0.1
leaf good good-client DNS:good.test
leaf revoked revoked-client DNS:revoked.test

# CRLs through `openssl ca`, which keeps the revocation database and CRL number.
crl() { # crl NAME CACERT CAKEY [REVOKED_CERT...]
  local n=$1 cert=$2 k=$3; shift 3
  : > "$n.index"; echo 01 > "$n.crlnumber"
  printf '%s\n' '[ca]' 'default_ca=c' '[c]' "database=$n.index" "crlnumber=$n.crlnumber" \
    default_md=sha256 default_crl_days=7 crl_extensions=crlext \
    '[crlext]' authorityKeyIdentifier=keyid:always > "$n.cnf"
  for r in "$@"; do
    openssl ca -config "$n.cnf" -cert "$cert" -keyfile "$k" -revoke "$r" -crl_reason keyCompromise 2>/dev/null
  done
  openssl ca -config "$n.cnf" -cert "$cert" -keyfile "$k" -gencrl -out "$n.crl" 2>/dev/null
}
crl int-crl int.pem int.key revoked.leaf.pem server-revoked.leaf.pem
crl root-crl root.pem root.key
cp root.pem ca.pem
cat int-crl.crl root-crl.crl > crls.pem
echo "$d: ca.pem crls.pem int.pem {server,server-revoked,good,revoked}.{pem,key} int-crl.crl root-crl.crl"
