#!/usr/bin/env bash
# Make the TLS certificates and SuperNode keys for a fedsigma deployment.
#
#   scripts/make-certs.sh [DIR] [SUPERNODES] [EXTRA_HOST ...]
#
# DIR (default: certs) gets
#   ca.crt, ca.key          a self-signed certificate authority (openssl, RSA 4096)
#   server.pem, server.key  the SuperLink's certificate, signed by the CA, valid for
#                           localhost, superlink, fleet-gate, 127.0.0.1, ::1 and every
#                           EXTRA_HOST (a DNS name or an IP address: the public name
#                           SuperNodes on other machines dial); the Fleet gate serves it too
#   superexec.secret        the SuperExec auth secret (32 random bytes, hex)
#   supernode-I, supernode-I.pub  for I = 1..SUPERNODES (default 3): an ECDSA P-384
#                           key pair in OpenSSH format per SuperNode, for SuperNode
#                           authentication (register the .pub with `flwr supernode
#                           register`, start the SuperNode with the private key)
#
# RSA_BITS (default 4096) sets the RSA key size. Existing files are kept: rerun with a larger SUPERNODES to add node keys.
# Files but ca.key are world-readable (the containers run as another user) inside a folder
# only you can enter. Fine for a demo; use your organisation's PKI in production.
set -euo pipefail

dir=${1:-certs}
bits=${RSA_BITS:-4096}
nodes=${2:-3}
shift $(( $# < 2 ? $# : 2 ))
if ! [[ "$nodes" =~ ^[0-9]+$ ]]; then
    echo "make-certs.sh: SUPERNODES must be a whole number, got '$nodes'" >&2
    exit 2
fi
command -v openssl >/dev/null || { echo "make-certs.sh: needs openssl on PATH" >&2; exit 2; }
mkdir -p "$dir"
chmod 700 "$dir"

if [[ -f "$dir/ca.crt" && -f "$dir/server.pem" ]]; then
    echo "keeping the existing CA and server certificate in $dir"
    # docker-compose.yml's SuperNodes dial the Fleet gate by this name (older certificates lack it)
    openssl x509 -in "$dir/server.pem" -noout -text | grep -q 'DNS:fleet-gate' \
        || echo "make-certs.sh: warning: $dir/server.pem does not name fleet-gate; docker-compose.yml's tls SuperNodes will refuse it: remove $dir/ca.crt and $dir/server.pem and rerun" >&2
else
    sans="DNS:localhost,DNS:superlink,DNS:fleet-gate,IP:127.0.0.1,IP:::1"
    for host in "$@"; do
        if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then sans+=",IP:$host"; else sans+=",DNS:$host"; fi
    done
    openssl genrsa -out "$dir/ca.key" "$bits" 2>/dev/null
    openssl req -new -x509 -key "$dir/ca.key" -sha256 -days 365 \
        -subj "/O=fedsigma demo CA/CN=fedsigma-ca" -out "$dir/ca.crt"
    openssl genrsa -out "$dir/server.key" "$bits" 2>/dev/null
    openssl req -new -key "$dir/server.key" -subj "/O=fedsigma/CN=superlink" -out "$dir/server.csr"
    printf 'subjectAltName = %s\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n' \
        "$sans" > "$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 365 -sha256 -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
    rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
    echo "CA and SuperLink certificate ($sans) → $dir"
fi

# Flower reads SuperNode keys in OpenSSH format, which openssl does not write:
# ssh-keygen if present, else Python's cryptography (installed with flwr).
for ((i = 1; i <= nodes; i++)); do
    key="$dir/supernode-$i"
    [[ -f "$key" && -f "$key.pub" ]] && continue
    rm -f "$key" "$key.pub"
    if command -v ssh-keygen >/dev/null; then
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedsigma-supernode-$i" -f "$key"
    else
        python3 - "$key" <<'PY'
import sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

key = ec.generate_private_key(ec.SECP384R1())
path = sys.argv[1]
with open(path, "wb") as out:
    out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()))
with open(path + ".pub", "wb") as out:
    out.write(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                            serialization.PublicFormat.OpenSSH) + b"\n")
PY
    fi
done
[[ "$nodes" -gt 0 ]] && echo "SuperNode key pairs supernode-1 … supernode-$nodes → $dir"
# The SuperExec auth secret (--superexec-auth-secret-file): the SuperLink's and SuperNodes'
# Runtime APIs serve only SuperExecs that hold it (Flower honours it with --isolation process)
if [[ ! -f "$dir/superexec.secret" ]]; then
    openssl rand -hex 32 | tr -d '\n' > "$dir/superexec.secret"
    echo "SuperExec auth secret → $dir/superexec.secret"
fi
chmod 644 "$dir"/*
chmod 600 "$dir/ca.key"  # only needed to sign more certificates
