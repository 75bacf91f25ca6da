#!/usr/bin/env bash
# Checks the systemd files of deploy/, as CI does (.ci/run):
#   1. `systemd-analyze verify` prints nothing for urbanflux.service and for an instance of
#      urbanflux@.service (verify reports most problems as warnings with exit status 0, so any
#      output fails the check);
#   2. `systemd-analyze security --offline=true` rates the exposure of both units at
#      MAX_EXPOSURE (1.5) or lower;
#   3. systemd-sysusers accepts deploy/sysusers.d/urbanflux.conf.
#
# verify checks that ExecStart= names an executable, and this machine need not have urbanflux
# installed, so it runs with --root on a throwaway tree: the host's unit library
# (/usr/lib/systemd/system), our units in etc/systemd/system, the urbanflux binary just built
# (hard link or copy) as usr/bin/urbanflux and /bin/kill for ExecReload=. Nothing outside that
# tree is written; systemd need not run as PID 1.
#
# Usage: deploy/check-units.sh [URBANFLUX_BINARY]
#        (default: target/debug/urbanflux, else target/release/urbanflux)
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=1.5
UNITS=(deploy/urbanflux.service deploy/urbanflux@.service)
# The instance urbanflux@.service is verified as.
INSTANCE=ci

command -v systemd-analyze >/dev/null || {
    echo "check-units: systemd-analyze not found: apt-get install -y systemd" >&2
    exit 1
}

bin=${1:-}
if [ -z "$bin" ]; then
    for candidate in target/debug/urbanflux target/release/urbanflux; do
        if [ -x "$candidate" ]; then
            bin=$candidate
            break
        fi
    done
fi
[ -n "$bin" ] && [ -x "$bin" ] || {
    echo "check-units: no urbanflux binary to verify ExecStart= against: run cargo build first, or pass its path" >&2
    exit 1
}

fail=0

# ---- 1. verify, on a throwaway root beside the binary (same file system: a hard link suffices)
root=$(mktemp -d "$(dirname "$bin")/check-units.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/usr/lib/systemd" "$root/etc/systemd/system"
ln -s usr/lib "$root/lib"
ln -s usr/bin "$root/bin"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
ln "$bin" "$root/usr/bin/urbanflux" 2>/dev/null || cp "$bin" "$root/usr/bin/urbanflux"
cp /bin/kill "$root/usr/bin/kill"
cp "${UNITS[@]}" "$root/etc/systemd/system/"

for unit in urbanflux.service "urbanflux@$INSTANCE.service"; do
    echo "+ systemd-analyze verify --root=$root $unit"
    out=$(systemd-analyze verify --root="$root" "$unit" 2>&1) && status=0 || status=$?
    if [ "$status" -ne 0 ] || [ -n "$out" ]; then
        echo "check-units: FAIL: verify $unit (exit $status):" >&2
        printf '%s\n' "$out" >&2
        fail=1
    else
        echo "  clean"
    fi
done

# ---- 2. security exposure
for unit in "${UNITS[@]}"; do
    echo "+ systemd-analyze security --offline=true $unit"
    out=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) && status=0 || status=$?
    # "→ Overall exposure level for urbanflux.service: 1.1 OK 🙂"
    exposure=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    if [ -z "$exposure" ]; then
        echo "check-units: FAIL: no exposure figure for $unit (exit $status):" >&2
        printf '%s\n' "$out" >&2
        fail=1
    elif awk -v e="$exposure" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(e > max) }'; then
        echo "check-units: FAIL: $unit exposure $exposure is above $MAX_EXPOSURE:" >&2
        printf '%s\n' "$out" | grep '✗' >&2 || true
        fail=1
    else
        echo "  exposure $exposure (at most $MAX_EXPOSURE)"
    fi
done

# ---- 3. the sysusers entry parses and creates the user the units run as
echo "+ systemd-sysusers --root=$root deploy/sysusers.d/urbanflux.conf"
mkdir -p "$root/etc"
if systemd-sysusers --root="$root" "$PWD/deploy/sysusers.d/urbanflux.conf" >/dev/null 2>&1 &&
    grep -q '^urbanflux:' "$root/etc/passwd" && grep -q '^urbanflux:' "$root/etc/group"; then
    echo "  user and group urbanflux created"
else
    echo "check-units: FAIL: systemd-sysusers did not create user and group urbanflux" >&2
    fail=1
fi

[ "$fail" -eq 0 ] && echo "check-units: OK"
exit "$fail"
