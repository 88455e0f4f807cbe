#!/usr/bin/env bash
# Creates or updates cryo's Python virtual environment and installs cryo into it,
# editable, with its dev extras.
#
# Owns: the venv (default .venv at the repo top; VENV=/some/path to use another) and
# its stamp file. Must not: pass any package index of its own (pip uses the machine's
# configuration), or reinstall when nothing changed: the install is skipped while the
# stamp matches pyproject.toml and the venv's interpreter.
set -euo pipefail

step() { printf 'cryo setup: %s\n' "$*"; }
die() { printf 'cryo setup: error: %s\n' "$*" >&2; exit 1; }

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_dir"
venv=${VENV:-.venv}
python=${PYTHON:-python3}
stamp="$venv/.cryo-install.sha256"

# What the install depends on: the project's metadata and the interpreter it went into.
install_fingerprint() {
    {
        sha256sum pyproject.toml
        "$venv/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d ' ' -f 1
}

main() {
    command -v "$python" >/dev/null || die "$python not found"
    # A concurrent run (another make in the same checkout) waits instead of racing pip.
    # The lock lives outside the venv because `venv --clear` empties that folder.
    local venv_path lock
    venv_path=$(realpath -m "$venv")
    lock="${TMPDIR:-/tmp}/cryo-setup-python.$(printf '%s' "$venv_path" | sha256sum | cut -c 1-16).lock"
    exec {venv_lock}>"$lock"
    if ! flock -n "$venv_lock"; then
        step "waiting for another set-up of $venv"
        flock -w 1800 "$venv_lock" || die "gave up waiting for $lock"
    fi

    if [[ -x $venv/bin/python && -f $stamp ]] \
        && [[ $(cat "$stamp") == "$(install_fingerprint 2>/dev/null)" ]]; then
        step "python venv $venv up to date"
        return 0
    fi

    # A venv whose interpreter no longer runs (python upgraded or moved) is rebuilt.
    if [[ -e $venv/bin/python ]] && ! "$venv/bin/python" -c '' 2>/dev/null; then
        step "recreating $venv (its interpreter no longer runs)"
        "$python" -m venv --clear "$venv"
    else
        step "creating or updating venv $venv"
        "$python" -m venv "$venv"
    fi

    step "installing cryo (editable, with dev extras) into $venv"
    local log="$venv/.cryo-pip.log"
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev]' \
        </dev/null >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "pip install -e '.[dev]' failed (full output in $log)"
    fi
    install_fingerprint >"$stamp"
    step "python ready: $("$venv/bin/python" --version) in $venv"
}

main "$@"
