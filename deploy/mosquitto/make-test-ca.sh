#!/usr/bin/env bash
# Make a throw-away certificate authority, a broker certificate and a client
# certificate for testing the TLS listener. NOT for production: the keys are
# unencrypted and the CA key sits next to the certificates.
#
#   make-test-ca.sh OUTDIR [CLIENT_CN] [EXTRA_SAN...]
#
# Writes OUTDIR/ca.{key,crt}, OUTDIR/server.{key,crt} (CN localhost, SAN
# DNS:localhost, IP:127.0.0.1 plus any EXTRA_SAN such as DNS:broker.example.org
# or IP:10.0.0.5) and OUTDIR/client.{key,crt} (CN = CLIENT_CN, default
# "test-site": with use_identity_as_username the CN is the MQTT username, so
# use a site id). Existing files are replaced. Validity: 30 days.
set -euo pipefail

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

[[ $# -ge 1 ]] || usage
case "$1" in -h | --help) usage ;; esac
outdir=$1
client_cn=${2:-test-site}
shift
if [[ $# -gt 0 ]]; then shift; fi
extra_san=("$@")

command -v openssl >/dev/null || { echo "make-test-ca.sh: openssl not found" >&2; exit 1; }

days=30
umask 077
mkdir -p "$outdir"
cd "$outdir"

san="DNS:localhost,IP:127.0.0.1"
for s in "${extra_san[@]}"; do
    san="$san,$s"
done

openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days "$days" \
    -subj "/CN=dustgate test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout ca.key -out ca.crt 2>/dev/null

# sign NAME CN EXTFILE-CONTENT
sign() {
    local name=$1 cn=$2 ext=$3
    openssl req -new -nodes -newkey rsa:2048 -subj "/CN=$cn" \
        -keyout "$name.key" -out "$name.csr" 2>/dev/null
    printf '%s\n' "$ext" >"$name.ext"
    openssl x509 -req -sha256 -days "$days" -in "$name.csr" \
        -CA ca.crt -CAkey ca.key -CAcreateserial \
        -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
}

sign server localhost "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san"

sign client "$client_cn" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

rm -f ca.srl
# Certificates are public; the broker (user mosquitto) must read its key.
chmod 0644 ca.crt server.crt client.crt
chmod 0640 server.key
echo "wrote $(pwd)/{ca,server,client}.{key,crt}; server SAN $san; client CN $client_cn" >&2
