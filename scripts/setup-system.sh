#!/usr/bin/env bash
# Prepares this Debian 12 machine for cryo: the Debian packages the runtime, the tests
# and the CRIU build need, then a working CRIU (via scripts/setup-criu.sh).
#
# Owns: the list of system packages. Must not: edit the system's apt sources, write a
# mirror host name, or do slow work when everything is already in place (a second run
# only asks dpkg and `criu check`). Safe to run concurrently: runs are serialised by
# flock on /var/cache/cryo/setup-system.lock.
#
# Python dependencies are not handled here; scripts/setup-python.sh owns the venv.
set -euo pipefail

scripts_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=setup-criu.sh
source "$scripts_dir/setup-criu.sh"

# runc runs containers and calls CRIU for them; runc checkpoint needs iptables;
# busybox-static fills test container root filesystems; grpc-proto provides the
# standard gRPC .proto files (health, status) that cryo compiles with protoc;
# chromium loads the HTML trace diagram headless in a test; openssl makes the TLS test
# certificate; curl is a second HTTP client for the daemon's API in a test.
SYSTEM_PACKAGES=(runc iptables busybox-static grpc-proto protobuf-compiler chromium openssl curl)

main() {
    [[ $(id -u) == 0 ]] || die "run as root (apt-get, runc and criu need it)"
    mkdir -p "$CRYO_CACHE/logs"
    hold_lock "$CRYO_CACHE/setup-system.lock"
    ensure_debian_packages "${SYSTEM_PACKAGES[@]}" "${CRIU_BUILD_PACKAGES[@]}"
    setup_criu
    step "system ready: $("$CRIU_DIR/criu" --version | awk '/^Version:/ { print "criu " $2 }')"
}

main "$@"
