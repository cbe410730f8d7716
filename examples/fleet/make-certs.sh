#!/usr/bin/env bash
# Creates the certificates of the fleet example (examples/fleet/README.md) with the
# openssl command-line tool, as Azure Event Grid's MQTT samples do with step-cli:
#
#   fleet-ca.pem/.key     the fleet's CA: registered with the broker as [[ca_certificate]]
#   server.pem/.key       the broker's certificate for localhost and 127.0.0.1 (fleet CA)
#   device-1.pem/.key     client certificates issued by the fleet CA; the subject CN is
#   device-2.pem/.key     the client's authentication name ([[client]] in brokk.toml)
#   service-1.pem/.key
#   device-3.pem/.key     issued by the fleet CA but not registered as a [[client]]:
#                         the broker refuses it at CONNECT (Not authorized)
#   rogue-ca.pem/.key     a second CA the broker does not know
#   rogue.pem/.key        a client certificate (CN=device-1!) issued by the rogue CA:
#                         the broker refuses it in the TLS handshake
#
# Usage: examples/fleet/make-certs.sh DIR
#
# Idempotent: a certificate whose .pem and .key both exist is kept, so running it
# again changes nothing (delete DIR to start over). Any failure stops the script
# with a message and a non-zero exit status.
set -Eeuo pipefail

die() { printf 'make-certs.sh: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

[ "$#" -eq 1 ] || die "usage: $0 DIR"
command -v openssl >/dev/null 2>&1 || die "openssl not found: install it (Debian: apt-get install openssl)"

DIR="$1"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

DAYS_CA=3650
DAYS_LEAF=365

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# An EC P-256 private key in PKCS#8 PEM (what rustls, Python's ssl and Mosquitto
# read), readable by its owner only.
new_key() {
    (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null) \
        || die "openssl genpkey failed for $1"
}

# A random positive 128-bit serial number.
serial() { printf '0x%s' "$(openssl rand -hex 16)"; }

# make_ca NAME CN: a self-signed CA certificate NAME.pem with its key NAME.key.
make_ca() {
    local name="$1" cn="$2"
    if [ -s "$DIR/$name.pem" ] && [ -s "$DIR/$name.key" ]; then
        echo "kept    $name.pem ($cn)"
        return
    fi
    new_key "$DIR/$name.key"
    cat >"$tmp/$name.ext" <<EOF
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = $cn
O = brokk fleet example
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    openssl req -new -x509 -config "$tmp/$name.ext" -key "$DIR/$name.key" \
        -sha256 -days "$DAYS_CA" -set_serial "$(serial)" -out "$DIR/$name.pem" \
        || die "cannot create the CA certificate $name.pem"
    echo "created $name.pem ($cn, self-signed CA)"
}

# make_leaf NAME CN CA USAGE [SAN]: NAME.pem/.key for subject CN=CN, issued by CA
# (CA.pem/CA.key), for USAGE (serverAuth or clientAuth), with an optional
# subjectAltName.
make_leaf() {
    local name="$1" cn="$2" ca="$3" usage="$4" san="${5:-}"
    if [ -s "$DIR/$name.pem" ] && [ -s "$DIR/$name.key" ]; then
        echo "kept    $name.pem (CN=$cn, issued by $ca)"
        return
    fi
    [ -s "$DIR/$ca.pem" ] && [ -s "$DIR/$ca.key" ] || die "$ca.pem/$ca.key missing in $DIR"
    new_key "$DIR/$name.key"
    openssl req -new -key "$DIR/$name.key" -subj "/CN=$cn/O=brokk fleet example" \
        -out "$tmp/$name.csr" \
        || die "cannot create the request for $name"
    {
        echo "basicConstraints = critical, CA:FALSE"
        echo "keyUsage = critical, digitalSignature"
        echo "extendedKeyUsage = $usage"
        echo "subjectKeyIdentifier = hash"
        echo "authorityKeyIdentifier = keyid"
        if [ -n "$san" ]; then echo "subjectAltName = $san"; fi
    } >"$tmp/$name.ext"
    openssl x509 -req -in "$tmp/$name.csr" -CA "$DIR/$ca.pem" -CAkey "$DIR/$ca.key" \
        -set_serial "$(serial)" -sha256 -days "$DAYS_LEAF" -extfile "$tmp/$name.ext" \
        -out "$DIR/$name.pem" 2>/dev/null \
        || die "cannot sign $name.pem with $ca"
    # Check what was made, so a broken openssl setup fails here and not in the broker.
    openssl verify -CAfile "$DIR/$ca.pem" -purpose "$( [ "$usage" = serverAuth ] && echo sslserver || echo sslclient )" \
        "$DIR/$name.pem" >/dev/null \
        || die "$name.pem does not verify against $ca.pem"
    echo "created $name.pem (CN=$cn, issued by $ca)"
}

make_ca fleet-ca "brokk fleet example CA"
make_leaf server localhost fleet-ca serverAuth "DNS:localhost, IP:127.0.0.1, IP:::1"
for client in device-1 device-2 service-1 device-3; do
    make_leaf "$client" "$client" fleet-ca clientAuth
done
make_ca rogue-ca "rogue CA (not registered with the broker)"
make_leaf rogue device-1 rogue-ca clientAuth

echo "certificates are in $DIR"
