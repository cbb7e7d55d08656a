#!/usr/bin/env bash
# Lints sigil's certificates and CRLs with pkilint (PKIX profile, WARNING and above) and
# fails on any finding except the linter's two known false positives:
#   pkix.invalid_uri_syntax on spiffe:// URIs (its URI validator knows only web schemes)
#   pkix.invalid_domain_name_syntax on "localhost" (it wants a dot in every DNS name)
# usage: pkilint.sh cert FILE | crl FILE | arl FILE | chain ISSUER SUBJECT
# exit: 0 clean, 1 findings remain (printed on stdout), 2 usage error or pkilint failure
set -euo pipefail
bin=${SIGIL_INTEROP_VENV:-/tmp/sigil-interop-venv}/bin
usage() { echo "usage: pkilint.sh cert FILE | crl FILE | arl FILE | chain ISSUER SUBJECT" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# pkilint wants one document per file: given several PEM blocks it lints only the first,
# or fails to decode the file, depending on lengths. sigil's cert.pem holds the leaf and
# the intermediate, so each block goes to a file of its own. DER passes through whole.
blocks() {
  local n
  n=$(awk -v p="$tmp/b" '/^-----BEGIN /{n++; f=p n ".pem"} f{print > f} /^-----END /{close(f); f=""} END{print n+0}' "$1")
  if [ "$n" -eq 0 ]; then echo "$1"; else for i in $(seq "$n"); do echo "$tmp/b$i.pem"; done; fi
}

# lint LABEL CMD...: run one pkilint command with JSON output and filter its findings.
lint() {
  local label=$1; shift
  set +e
  "$@" -s WARNING -f JSON > "$tmp/out.json" 2> "$tmp/err"
  set -e
  "$bin/python" - "$label" "$tmp/out.json" "$tmp/err" <<'PY'
import json, re, sys
label, out, err = sys.argv[1:]
try:
    results = json.load(open(out))["results"]
except (ValueError, KeyError):
    sys.stderr.write(f"{label}: pkilint gave no report:\n{open(err).read()}{open(out).read()}")
    sys.exit(2)
def false_positive(f):
    value = re.search(r'"(.*)"', f.get("message") or "")
    value = value.group(1) if value else None
    return ((f["code"] == "pkix.invalid_uri_syntax" and value and value.startswith("spiffe://"))
            or (f["code"] == "pkix.invalid_domain_name_syntax" and value == "localhost"))
bad = 0
for r in results:
    for f in r["finding_descriptions"]:
        line = f'{label}: {f["code"]} ({f["severity"]}) at {r["node_path"]}: {f.get("message") or ""}'
        if false_positive(f):
            sys.stderr.write(f"ignored known false positive: {line}\n")
        else:
            print(line)
            bad += 1
sys.exit(1 if bad else 0)
PY
}

[ $# -ge 1 ] || usage
cmd=$1; shift
case "$cmd" in cert|crl|arl) [ $# -eq 1 ] || usage ;; chain) [ $# -eq 2 ] || usage ;; *) usage ;; esac
for f in "$@"; do [ -r "$f" ] || { echo "pkilint.sh: cannot read $f" >&2; exit 2; }; done
status=0
case "$cmd" in
  cert|crl|arl)
    case "$cmd" in
      cert) tool=("$bin/lint_pkix_cert" lint) ;;
      crl)  tool=("$bin/lint_crl" lint -t CRL -p PKIX) ;;
      arl)  tool=("$bin/lint_crl" lint -t ARL -p PKIX) ;;
    esac
    mapfile -t parts < <(blocks "$1")
    for i in "${!parts[@]}"; do
      # keep the worst status: 2 (tool failure) over 1 (findings) over 0
      lint "$1#$((i + 1))" "${tool[@]}" "${parts[$i]}" || status=$(( $? > status ? $? : status ))
    done ;;
  chain)
    # The first certificate of each file: the issuer, then the subject it signed.
    mkdir "$tmp/i" "$tmp/s"
    issuer=$(tmp=$tmp/i blocks "$1" | head -n1)
    subject=$(tmp=$tmp/s blocks "$2" | head -n1)
    lint "$2 <- $1" "$bin/lint_pkix_signer_signee_cert_chain" lint "$issuer" "$subject" || status=$? ;;
esac
exit "$status"
