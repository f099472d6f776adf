#!/usr/bin/env bash
# Builds the OCI image without a Docker daemon: buildah, from scratch, with the filesystem
# rootfs.sh stages: every service binary cargo built (target/<profile>/rocket-rides-*), the
# shared libraries they link, the CA bundle, /etc/passwd and /etc/group with the non-root user
# 65532 (nonroot), /tmp and /home/nonroot. It runs as 65532, with no shell.
# It is tagged localhost/rocket-rides-log:<workspace version> in the local containers storage
# and saved as an OCI archive, target/image/rocket-rides-log.oci.tar, for `podman load -i` or
# `kind load image-archive`.
#
#   PROFILE=release (default; make image) or PROFILE=debug (the binaries `make build` made;
#   make image-debug, which `make test` uses) selects the binaries; build them first. A debug
#   image is tagged <version>-debug and saved as target/image/rocket-rides-log-debug.oci.tar.
#   IMAGE_NAME (default localhost/rocket-rides-log) and IMAGE_TAG override the name and tag.
#
# buildah runs with the vfs storage driver, which works everywhere (overlay needs kernel and
# mount support that containers in CI often lack); podman must use the same driver to see it.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=${PROFILE:-release}
case $profile in
  release) dir=release suffix= ;;
  debug | dev) dir=debug suffix=-debug ;;
  *) echo "PROFILE=$profile: expected release or debug" >&2; exit 2 ;;
esac
target=${CARGO_TARGET_DIR:-target}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
image=${IMAGE_NAME:-localhost/rocket-rides-log}:${IMAGE_TAG:-$version$suffix}
archive=$target/image/rocket-rides-log$suffix.oci.tar
buildah=(buildah --storage-driver vfs)

command -v buildah >/dev/null || {
  echo "buildah is not installed: run \`make deps\` (apt-get install podman buildah runc)" >&2
  exit 1
}
bash deploy/image/containers-conf.sh

stage=$(mktemp -d)
root=$stage/root
ctr=
cleanup() {
  [ -z "$ctr" ] || "${buildah[@]}" rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$stage"
}
trap cleanup EXIT
mkdir -m 755 "$root" "$stage/home"
bins=$(bash deploy/image/rootfs.sh "$target/$dir" "$root")

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
ctr=$("${buildah[@]}" from scratch)
"${buildah[@]}" copy --quiet "$ctr" "$root" /
"${buildah[@]}" copy --quiet --chown 65532:65532 "$ctr" "$stage/home" /home/nonroot
"${buildah[@]}" config \
  --user 65532:65532 \
  --workingdir /home/nonroot \
  --env PATH=/usr/local/bin \
  --env HOME=/home/nonroot \
  --entrypoint '[]' \
  --cmd '["rocket-rides-api"]' \
  --port 50051/tcp --port 50052/tcp --port 50053/tcp --port 50054/tcp --port 9090/tcp \
  --label org.opencontainers.image.title=rocket-rides-log \
  --label "org.opencontainers.image.description=Rocket Rides Log: $(echo $bins)" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --label org.opencontainers.image.licenses=MIT \
  --label "dev.rocket-rides.profile=$profile" \
  "$ctr"
"${buildah[@]}" rmi "$image" >/dev/null 2>&1 || true
"${buildah[@]}" commit --quiet --format oci --rm "$ctr" "$image" >/dev/null
ctr=
mkdir -p "$(dirname "$archive")"
rm -f "$archive"
"${buildah[@]}" push --quiet "$image" "oci-archive:$archive:$image"
echo "built $image ($profile:" $bins") and saved it to $archive"
