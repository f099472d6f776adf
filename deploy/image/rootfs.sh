#!/usr/bin/env bash
# Stages the image's whole filesystem in ROOT (a new directory), from the rocket-rides-*
# binaries in BIN_DIR (a cargo profile directory such as target/release):
#   /usr/local/bin/rocket-rides-*   every service binary found (debug info stripped)
#   the shared libraries they link, each at the path ldd resolves (the loader included)
#   /etc/ssl/certs/ca-certificates.crt, the CA bundle rustls-native-certs reads
#   /etc/passwd, /etc/group: root, nobody, and nonroot (65532) as in distroless; nsswitch.conf
#   /tmp (1777); /home/nonroot is the image builder's to add, owned by 65532
# Used by build.sh (buildah) and by the Dockerfile, so both images hold the same content.
#   deploy/image/rootfs.sh BIN_DIR ROOT
set -euo pipefail
bin_dir=${1:?usage: rootfs.sh BIN_DIR ROOT}
root=${2:?usage: rootfs.sh BIN_DIR ROOT}

# Executables named rocket-rides-* at the top of the profile directory; cargo keeps test and
# bench executables under deps/ (and names them with a hash), so none of those are taken.
bins=()
for bin in "$bin_dir"/rocket-rides-*; do
  [[ -f $bin && -x $bin && ! $(basename "$bin") =~ -[0-9a-f]{16}$ ]] && bins+=("$bin")
done
[ ${#bins[@]} -gt 0 ] || {
  echo "no rocket-rides-* binaries in $bin_dir: build them first (cargo build --workspace --bins)" >&2
  exit 1
}

mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/home"
chmod 1777 "$root/tmp"
for bin in "${bins[@]}"; do
  strip --strip-debug -o "$root/usr/local/bin/$(basename "$bin")" "$bin"
done
ldd "${bins[@]}" | awk '/=> \// { print $3 } /^\t\// { print $1 }' | sort -u |
  while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
nonroot:x:65532:
GROUP
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
printf '%s\n' "${bins[@]##*/}"
