#!/usr/bin/env bash
# Installs what `make up` and `make test` run against, when missing: PostgreSQL and Redis from
# Debian's packages; with `bench`, also h2load (nghttp2-client) for `make bench`. Everything
# else is built by cargo or installed into .venv by the Makefile.
set -euo pipefail

missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v promtool >/dev/null || missing+=(prometheus)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# The OCI image (make image) and the chart's pods run from it (tests/pods): buildah and podman on runc.
command -v buildah >/dev/null || missing+=(buildah)
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v openssl >/dev/null || missing+=(openssl)
# tests/oci: a local OCI registry (the CNCF distribution) to publish the image and the chart to.
command -v docker-registry >/dev/null || missing+=(docker-registry)
if [ "${1:-}" = bench ]; then
  command -v h2load >/dev/null || missing+=(nghttp2-client)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing ${missing[*]} with apt-get" >&2
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
