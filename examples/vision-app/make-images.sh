#!/usr/bin/env bash
# Build the vision-app images offline: build/images/vision-app, an OCI image layout tagged
# 1.0.0 holding linux/amd64 and linux/arm64/v8.
#
# busybox-static for both architectures comes from the Debian archive (the .debs are kept in
# build/debs/ and not fetched again). Fetching the arm64 one adds arm64 as a dpkg foreign
# architecture if it is not one yet, which needs root. The arm64 binary is never run.
#
# Environment: PYTHON (default python3); SOURCE_DATE_EPOCH (default below, so the digests are the
# same on every machine given the same busybox .debs).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build="$here/build"
python=${PYTHON:-python3}
tag=1.0.0
# 2026-01-01T00:00:00Z
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1767225600}

# ensure_arch ARCH: make apt able to fetch packages for ARCH.
ensure_arch() {
    local arch=$1
    if [[ $arch == "$(dpkg --print-architecture)" ]] || dpkg --print-foreign-architectures | grep -qx "$arch"; then
        return
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "make-images: $arch is not a dpkg architecture here; run as root once, or add it:" >&2
        echo "  dpkg --add-architecture $arch && apt-get update" >&2
        exit 1
    fi
    dpkg --add-architecture "$arch"
    apt-get update -qq
}

# fetch_deb ARCH: the path of busybox-static for ARCH in build/debs, downloaded if missing.
fetch_deb() {
    local arch=$1 deb
    mkdir -p "$build/debs"
    deb=$(find "$build/debs" -maxdepth 1 -name "busybox-static_*_${arch}.deb" | sort -V | tail -n 1)
    if [[ -z $deb ]]; then
        ensure_arch "$arch"
        # apt-get download writes to the current directory; a temporary one keeps partial
        # downloads out of the cache.
        local tmp
        tmp=$(mktemp -d "$build/debs/.download.XXXXXX")
        # as root, apt fetches as the unprivileged _apt user, which must be able to write here
        if [[ $(id -u) -eq 0 ]] && id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
        (cd "$tmp" && apt-get download -qq "busybox-static:$arch" >&2)
        mv "$tmp"/busybox-static_*_"$arch".deb "$build/debs/"
        rmdir "$tmp"
        deb=$(find "$build/debs" -maxdepth 1 -name "busybox-static_*_${arch}.deb" | sort -V | tail -n 1)
    fi
    echo "$deb"
}

# unpack ARCH DEB: the path of the busybox binary unpacked from DEB.
unpack() {
    local arch=$1 deb=$2 dir="$build/busybox/$1"
    rm -rf "$dir"
    mkdir -p "$dir"
    dpkg-deb -x "$deb" "$dir"
    echo "$dir/bin/busybox"
}

args=()
for arch in amd64 arm64; do
    deb=$(fetch_deb "$arch")
    echo "make-images: $arch: $(basename "$deb")" >&2
    args+=(--busybox "$arch=$(unpack "$arch" "$deb")")
done
"$python" "$here/make_images.py" "${args[@]}" --out "$build/images/vision-app" --tag "$tag"
