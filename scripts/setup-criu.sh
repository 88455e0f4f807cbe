#!/usr/bin/env bash
# Builds and caches a CRIU new enough for this kernel, as /var/cache/cryo/criu/criu.
#
# Owns: the CRIU build dependencies, a private apt configuration that can see Debian
# trixie's source packages, the build itself, and the cache under /var/cache/cryo/criu/.
# Must not: touch the system's apt sources, write any mirror host name (the mirror is
# read from the machine's own apt sources), or replace a working cached binary.
#
# Why build at all: Debian 12's criu 3.17 fails every operation on kernels >= 6.13
# ("vdso: Unexpected rt vDSO area bounds", upstream CRIU issue 2532, fixed in 4.1).
# Debian 13 "trixie" ships a fixed CRIU, so its source package is built here.
#
# Run it directly (`bash scripts/setup-criu.sh`) or source it: scripts/setup-system.sh
# sources it for `ensure_debian_packages` and `CRIU_BUILD_PACKAGES`, then calls
# `setup_criu`, so the apt helper and the dependency list exist once.

CRYO_CACHE=/var/cache/cryo
CRIU_DIR=$CRYO_CACHE/criu
CRIU_MIN_VERSION=4.1
TRIXIE_APT_DIR=$CRYO_CACHE/apt-trixie
CRIU_BUILD_DIR=$CRYO_CACHE/criu-build
CRIU_BUILD_LOG=$CRYO_CACHE/logs/criu-build.log
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# What `make criu` needs for every feature cryo uses (checked with CRIU 4.1.1, whose
# build then only notes the missing amdgpu plugin); dpkg-dev serves `apt-get source`.
CRIU_BUILD_PACKAGES=(
    gcc make pkg-config
    libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev
    libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev
    dpkg-dev ca-certificates xz-utils
)

step() { printf 'cryo setup: %s\n' "$*"; }
die() { printf 'cryo setup: error: %s\n' "$*" >&2; exit 1; }

# Opens the lock file $1 and holds an exclusive flock on it until the shell exits or
# closes the descriptor, which is left in LOCK_FD. Waits at most half an hour, so a
# stuck set-up elsewhere fails a CI run instead of hanging it.
hold_lock() {
    exec {LOCK_FD}>"$1"
    if ! flock -n "$LOCK_FD"; then
        step "waiting for another set-up (lock $1)"
        flock -w 1800 "$LOCK_FD" || die "gave up waiting for $1"
    fi
}

# Prints the packages among "$@" that dpkg does not report as installed.
missing_debian_packages() {
    local package status
    for package in "$@"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
        [[ $status == installed ]] || printf '%s\n' "$package"
    done
}

# Installs whichever of "$@" are missing. The package lists are refreshed only when
# something has to be installed, so a machine that is already set up never waits on
# the network. apt.lock serialises concurrent set-ups, so the second one finds the
# packages installed by the first and skips its own update.
ensure_debian_packages() {
    local missing apt_lock
    mapfile -t missing < <(missing_debian_packages "$@")
    if ((${#missing[@]} == 0)); then
        step "Debian packages present ($# checked)"
        return 0
    fi
    mkdir -p "$CRYO_CACHE/logs"
    hold_lock "$CRYO_CACHE/apt.lock"
    apt_lock=$LOCK_FD
    # Another set-up may have installed them while this one waited for the lock.
    mapfile -t missing < <(missing_debian_packages "${missing[@]}")
    if ((${#missing[@]})); then
        step "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update \
            </dev/null >"$CRYO_CACHE/logs/apt.log" 2>&1 \
            || apt_failed "apt-get update"
        step "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 \
            install --no-install-recommends "${missing[@]}" \
            </dev/null >>"$CRYO_CACHE/logs/apt.log" 2>&1 \
            || apt_failed "apt-get install ${missing[*]}"
    fi
    exec {apt_lock}>&-
}

apt_failed() {
    tail -n 20 "$CRYO_CACHE/logs/apt.log" >&2
    die "$1 failed (full output in $CRYO_CACHE/logs/apt.log)"
}

# Prints the first URI of the system's main Debian archive (the entry that carries the
# release's own codename as a suite, which excludes -security and -updates), taken from
# deb822 .sources files first, then one-line .list files.
debian_archive_uri() {
    local codename uri
    codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "/etc/os-release names no VERSION_CODENAME"
    shopt -s nullglob
    local deb822_files=(/etc/apt/sources.list.d/*.sources)
    local one_line_files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
    shopt -u nullglob
    if ((${#deb822_files[@]})); then
        uri=$(awk -v codename="$codename" '
            function finish_stanza() {
                if (enabled && has_deb && has_codename && first_uri != "") {
                    print first_uri; found = 1; exit
                }
                enabled = 1; has_deb = 0; has_codename = 0; first_uri = ""
            }
            BEGIN { enabled = 1 }
            FNR == 1 { finish_stanza() }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { finish_stanza(); next }
            {
                field = tolower($1)
                if (field == "types:") {
                    for (i = 2; i <= NF; i++) if ($i == "deb" || $i == "deb-src") has_deb = 1
                } else if (field == "suites:") {
                    for (i = 2; i <= NF; i++) if ($i == codename) has_codename = 1
                } else if (field == "uris:") {
                    if (first_uri == "") first_uri = $2
                } else if (field == "enabled:") {
                    enabled = (tolower($2) != "no")
                }
            }
            END { if (!found) finish_stanza() }
        ' "${deb822_files[@]}")
    fi
    if [[ -z ${uri:-} ]]; then
        local file
        for file in "${one_line_files[@]}"; do
            [[ -r $file ]] || continue
            # "deb [options] URI suite components…"; the options are optional.
            uri=$(sed -E 's/\[[^]]*\]//' "$file" | awk -v codename="$codename" '
                ($1 == "deb" || $1 == "deb-src") && $3 == codename { print $2; exit }')
            [[ -n $uri ]] && break
        done
    fi
    [[ -n ${uri:-} ]] || die "no Debian archive for '$codename' found in the apt sources"
    printf '%s\n' "${uri%/}"
}

# apt-get limited to the private trixie source list, its own lists and its own cache;
# the system's sources, lists and caches are left alone.
trixie_apt_get() {
    apt-get -q \
        -o Dir::Etc::SourceList="$TRIXIE_APT_DIR/trixie.sources" \
        -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::State::Lists="$TRIXIE_APT_DIR/lists" \
        -o Dir::Cache="$TRIXIE_APT_DIR/cache" \
        "$@"
}

# Prints the cached CRIU's version if it is at least CRIU_MIN_VERSION and `criu check`
# passes on this kernel; fails otherwise.
working_criu_version() {
    local criu=$1 version
    [[ -x $criu ]] || return 1
    version=$("$criu" --version 2>/dev/null | awk '/^Version:/ { print $2; exit }')
    [[ -n $version ]] || return 1
    printf '%s\n%s\n' "$CRIU_MIN_VERSION" "$version" | sort -V -C || return 1
    "$criu" check >/dev/null 2>&1 || return 1
    printf '%s\n' "$version"
}

build_failed() {
    tail -n 30 "$CRIU_BUILD_LOG" >&2
    die "$1 (full output in $CRIU_BUILD_LOG; sources left in $CRIU_BUILD_DIR)"
}

fetch_criu_source() {
    local uri
    uri=$(debian_archive_uri)
    step "fetching criu source from trixie (archive $uri)"
    mkdir -p "$TRIXIE_APT_DIR/lists/partial" "$TRIXIE_APT_DIR/cache/archives/partial" \
        "$TRIXIE_APT_DIR/source"
    cat >"$TRIXIE_APT_DIR/trixie.sources" <<EOF
Types: deb-src
URIs: $uri
Suites: trixie
Components: main
Signed-By: $DEBIAN_KEYRING
EOF
    # apt downloads as the unprivileged _apt user; let it write where the files land.
    if id _apt >/dev/null 2>&1; then
        chown _apt "$TRIXIE_APT_DIR/source" "$TRIXIE_APT_DIR/lists/partial"
    fi
    trixie_apt_get update </dev/null >>"$CRIU_BUILD_LOG" 2>&1 \
        || build_failed "apt-get update for the trixie source list failed"
    (cd "$TRIXIE_APT_DIR/source" && trixie_apt_get source --tar-only criu/trixie) \
        </dev/null >>"$CRIU_BUILD_LOG" 2>&1 \
        || build_failed "apt-get source criu/trixie failed"
}

# Builds CRIU from the newest trixie orig tarball and installs it into CRIU_DIR.
build_criu() {
    local tarball
    mkdir -p "$CRYO_CACHE/logs"
    : >"$CRIU_BUILD_LOG"
    fetch_criu_source
    tarball=$(find "$TRIXIE_APT_DIR/source" -maxdepth 1 -name 'criu_*.orig.tar.*' | sort -V | tail -n 1)
    [[ -n $tarball ]] || build_failed "no criu orig tarball after apt-get source"

    step "unpacking $(basename "$tarball")"
    rm -rf "$CRIU_BUILD_DIR"
    mkdir -p "$CRIU_BUILD_DIR"
    tar -xf "$tarball" -C "$CRIU_BUILD_DIR" --strip-components=1 \
        || build_failed "cannot unpack $tarball"

    step "building criu (make -j2 criu, about a minute)"
    make -C "$CRIU_BUILD_DIR" -j2 criu </dev/null >>"$CRIU_BUILD_LOG" 2>&1 \
        || build_failed "make criu failed"

    step "installing criu into $CRIU_DIR"
    mkdir -p "$CRIU_DIR"
    # Copy then rename, so a concurrent user never runs a half-written binary.
    install -m 0755 "$CRIU_BUILD_DIR/criu/criu" "$CRIU_DIR/criu.new"
    install -m 0644 "$CRIU_BUILD_DIR/images/rpc.proto" "$CRIU_DIR/rpc.proto.new"
    mv -f "$CRIU_DIR/rpc.proto.new" "$CRIU_DIR/rpc.proto"
    mv -f "$CRIU_DIR/criu.new" "$CRIU_DIR/criu"
    rm -rf "$CRIU_BUILD_DIR"
}

setup_criu() {
    local criu_lock version
    [[ $(id -u) == 0 ]] || die "run as root (apt-get and criu check need it)"
    mkdir -p "$CRYO_CACHE/logs"
    hold_lock "$CRYO_CACHE/criu.lock"
    criu_lock=$LOCK_FD
    if version=$(working_criu_version "$CRIU_DIR/criu"); then
        step "criu $version already built and working"
    else
        ensure_debian_packages "${CRIU_BUILD_PACKAGES[@]}"
        build_criu
        step "checking criu on this kernel (criu check)"
        "$CRIU_DIR/criu" check || die "$CRIU_DIR/criu check failed on this kernel"
        version=$(working_criu_version "$CRIU_DIR/criu") \
            || die "$CRIU_DIR/criu is older than $CRIU_MIN_VERSION: $("$CRIU_DIR/criu" --version)"
    fi
    exec {criu_lock}>&-
    step "criu $version at $CRIU_DIR/criu"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    setup_criu
fi
