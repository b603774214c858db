#!/usr/bin/env bash
# Install dustgate on a Raspberry Pi OS / Debian board. Safe to run again: it
# upgrades the program and units in place and never overwrites a config.
#
#   sudo deploy/pi/install.sh [OPTIONS] [REPO_DIR]
#
# REPO_DIR is the dustgate source tree to install (default: the tree this
# script is in).
#
# Options:
#   --dry-run         print every step and change nothing (no root needed)
#   --rules           also enable the rule engine on this board
#   --with-mosquitto  also install a local broker (Debian mosquitto) with the
#                     dustgate config, ACL and an empty password file
#   --with-grafana    also provision an installed Grafana (from Grafana's own
#                     APT repository) with the dustgate data source and
#                     dashboards (InfluxDB expected on 127.0.0.1:8086)
#   --start           start (or restart) the enabled services now; without it
#                     the services are enabled for the next boot and only
#                     restarted if they were already running
#   --uninstall       remove the units and the program (/opt/dustgate); keep
#                     configs (/etc/dustgate) and state (/var/lib/dustgate*)
#   --purge           with --uninstall: also remove configs, state, the
#                     broker's and Grafana's dustgate files and the user
#   -h, --help        this text
#
# What it does:
#   1. apt packages: python3-venv (and mosquitto, mosquitto-clients)
#   2. system user "dustgate", member of "dialout" (serial ports)
#   3. venv in /opt/dustgate/venv with dustgate pip-installed from REPO_DIR
#   4. /etc/dustgate/{site,rules}.yaml from REPO_DIR/examples when missing,
#      /etc/dustgate/secrets.env and rules.env (root only) when missing
#   5. systemd units dustgate-agent (and dustgate-rules), enabled; systemctl
#      is only called when systemd is running (not in a chroot/image build)
#   6. with --with-mosquitto: /etc/mosquitto/conf.d/dustgate.conf,
#      /etc/mosquitto/dustgate/{acl,passwd}
#   7. with --with-grafana: /etc/grafana/provisioning/*/dustgate.yaml and
#      /var/lib/grafana/dashboards/dustgate/ (replaced on every run)
set -euo pipefail

# Paths can be moved for tests and unusual layouts.
PREFIX=${DUSTGATE_PREFIX:-/opt/dustgate}
ETC_DIR=${DUSTGATE_ETC:-/etc/dustgate}
UNIT_DIR=${DUSTGATE_UNIT_DIR:-/etc/systemd/system}
MOSQ_ETC=${DUSTGATE_MOSQUITTO_ETC:-/etc/mosquitto}
GRAFANA_ETC=${DUSTGATE_GRAFANA_ETC:-/etc/grafana}
GRAFANA_LIB=${DUSTGATE_GRAFANA_LIB:-/var/lib/grafana}
STATE_ROOT=${DUSTGATE_STATE_ROOT:-/var/lib}
STATE_DIRS=("$STATE_ROOT/dustgate" "$STATE_ROOT/dustgate-rules")
readonly SERVICE_USER=dustgate
readonly AGENT_UNIT=dustgate-agent.service
readonly RULES_UNIT=dustgate-rules.service
readonly BACKOFF_DROPIN=10-restart-backoff.conf

DRY_RUN=0
WITH_RULES=0
WITH_MOSQUITTO=0
WITH_GRAFANA=0
START=0
UNINSTALL=0
PURGE=0
REPO=""

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit "${1:-0}"
}

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

# Print a command; run it unless --dry-run.
run() {
    local quoted
    quoted=$(printf '%q ' "$@")
    printf '    + %s\n' "${quoted% }"
    if [[ $DRY_RUN -eq 0 ]]; then
        "$@"
    fi
}

# write_new MODE OWNER:GROUP PATH < content: create PATH only if it is missing.
write_new() {
    local mode=$1 owner=$2 path=$3 content
    content=$(cat)
    if [[ -e "$path" ]]; then
        note "keep existing $path"
        return 0
    fi
    note "create $path (mode $mode, owner $owner)"
    if [[ $DRY_RUN -eq 0 ]]; then
        install -m "$mode" -o "${owner%%:*}" -g "${owner#*:}" /dev/null "$path"
        printf '%s\n' "$content" >"$path"
    fi
}

# copy_new MODE OWNER:GROUP SRC DEST: copy SRC only if DEST is missing.
copy_new() {
    local mode=$1 owner=$2 src=$3 dest=$4
    if [[ -e "$dest" ]]; then
        note "keep existing $dest"
        return 1
    fi
    run install -m "$mode" -o "${owner%%:*}" -g "${owner#*:}" "$src" "$dest"
}

systemd_running() { [[ -d /run/systemd/system ]]; }

systemd_version() {
    local v
    v=$(systemctl --version 2>/dev/null | sed -n '1s/^systemd \([0-9][0-9]*\).*/\1/p') || true
    echo "${v:-0}"
}

pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            --rules) WITH_RULES=1 ;;
            --with-mosquitto) WITH_MOSQUITTO=1 ;;
            --with-grafana) WITH_GRAFANA=1 ;;
            --start) START=1 ;;
            --uninstall) UNINSTALL=1 ;;
            --purge) PURGE=1 ;;
            -h | --help) usage 0 ;;
            -*) printf 'install.sh: unknown option %s\n\n' "$1" >&2 && usage 2 >&2 ;;
            *)
                [[ -z "$REPO" ]] || die "only one REPO_DIR, got '$REPO' and '$1'"
                REPO=$1
                ;;
        esac
        shift
    done
    if [[ $PURGE -eq 1 && $UNINSTALL -eq 0 ]]; then
        die "--purge only goes with --uninstall"
    fi
    if [[ -z "$REPO" ]]; then
        REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    fi
    REPO=$(cd "$REPO" && pwd) || die "REPO_DIR '$REPO' not found"
    [[ -f "$REPO/pyproject.toml" ]] || die "$REPO is not a dustgate source tree (no pyproject.toml)"
    [[ "$PREFIX" == /* && "$PREFIX" != / ]] || die "DUSTGATE_PREFIX must be an absolute path, not /"
}

units_wanted() {
    echo "$AGENT_UNIT"
    if [[ $WITH_RULES -eq 1 ]]; then echo "$RULES_UNIT"; fi
}

# --------------------------------------------------------------------- install

install_packages() {
    say "1. apt packages"
    local wanted=(python3 python3-venv) missing=() p
    if [[ $WITH_MOSQUITTO -eq 1 ]]; then wanted+=(mosquitto mosquitto-clients); fi
    for p in "${wanted[@]}"; do
        if pkg_installed "$p"; then note "$p already installed"; else missing+=("$p"); fi
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        run apt-get update
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

create_user() {
    say "2. system user $SERVICE_USER in group dialout"
    if getent passwd "$SERVICE_USER" >/dev/null; then
        note "user $SERVICE_USER exists"
    else
        run useradd --system --user-group --home-dir /var/lib/dustgate --no-create-home \
            --shell /usr/sbin/nologin --comment "dustgate gateway" "$SERVICE_USER"
    fi
    if id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx dialout; then
        note "$SERVICE_USER already in dialout"
    else
        run usermod --append --groups dialout "$SERVICE_USER"
    fi
}

install_program() {
    say "3. program: venv $PREFIX/venv, pip install $REPO"
    if [[ -x "$PREFIX/venv/bin/python" ]]; then
        note "venv exists"
    else
        run install -d -m 0755 "$PREFIX"
        run python3 -m venv "$PREFIX/venv"
    fi
    run "$PREFIX/venv/bin/pip" install --disable-pip-version-check --no-cache-dir \
        --upgrade "$REPO"
    if [[ -f "$REPO/README.md" ]]; then
        run install -m 0644 "$REPO/README.md" "$PREFIX/README.md"
    fi
}

install_configs() {
    say "4. configuration in $ETC_DIR (existing files are kept)"
    run install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC_DIR"
    local f
    for f in site.yaml rules.yaml; do
        if [[ -e "$ETC_DIR/$f" ]]; then
            note "keep existing $ETC_DIR/$f"
        elif [[ -f "$REPO/examples/$f" ]]; then
            run install -m 0640 -o root -g "$SERVICE_USER" "$REPO/examples/$f" "$ETC_DIR/$f"
        else
            warn "no $REPO/examples/$f to start $ETC_DIR/$f from: write it by hand"
        fi
    done
    # Read by systemd (as root) through EnvironmentFile=, so root-only.
    write_new 0600 root:root "$ETC_DIR/secrets.env" <<'EOF'
# dustgate secrets, read by systemd for dustgate-agent and dustgate-rules.
# KEY=value lines, no quotes needed. Keep this file mode 0600, owner root.
#DUSTGATE_MQTT_PASSWORD=
#DUSTGATE_INFLUX_TOKEN=
EOF
    write_new 0600 root:root "$ETC_DIR/rules.env" <<'EOF'
# Secrets for dustgate-rules only, read after secrets.env (values here win).
# The rule engine logs in to MQTT as dustgate-rules, with its own password.
#DUSTGATE_MQTT_PASSWORD=
#DUSTGATE_INFLUX_TOKEN=
EOF
    note "edit $ETC_DIR/site.yaml (site id, serial ports, devices, broker) and secrets.env,"
    note "then check with: $PREFIX/venv/bin/dustgate check $ETC_DIR/site.yaml"
}

install_units() {
    say "5. systemd units in $UNIT_DIR"
    local unit version
    version=$(systemd_version)
    for unit in "$AGENT_UNIT" "$RULES_UNIT"; do
        run install -m 0644 "$REPO/deploy/systemd/$unit" "$UNIT_DIR/$unit"
        if [[ $version -ge 254 ]]; then
            run install -d -m 0755 "$UNIT_DIR/$unit.d"
            run install -m 0644 "$REPO/deploy/systemd/restart-backoff.conf" \
                "$UNIT_DIR/$unit.d/$BACKOFF_DROPIN"
        else
            note "systemd ${version} < 254: fixed 5 s restart delay (no backoff drop-in)"
        fi
    done
    if ! systemd_running; then
        note "systemd is not running here: units installed but not enabled;"
        note "on the running system: systemctl enable --now $(units_wanted | paste -sd " ")"
        return 0
    fi
    run systemctl daemon-reload
    local wanted
    mapfile -t wanted < <(units_wanted)
    run systemctl enable "${wanted[@]}"
    if [[ $START -eq 1 ]]; then
        run systemctl restart "${wanted[@]}"
    else
        # Running services pick up the new program; stopped ones stay stopped.
        run systemctl try-restart "$AGENT_UNIT" "$RULES_UNIT"
        note "not started (use --start, or: systemctl start ${wanted[*]})"
    fi
}

install_mosquitto() {
    [[ $WITH_MOSQUITTO -eq 1 ]] || return 0
    say "6. local broker: $MOSQ_ETC/conf.d/dustgate.conf, ACL, password file"
    local changed=0
    run install -d -m 0750 -o root -g mosquitto "$MOSQ_ETC/dustgate"
    copy_new 0644 root:root "$REPO/deploy/mosquitto/mosquitto.conf" \
        "$MOSQ_ETC/conf.d/dustgate.conf" && changed=1
    copy_new 0640 root:mosquitto "$REPO/deploy/mosquitto/acl" "$MOSQ_ETC/dustgate/acl" &&
        changed=1
    if [[ -e "$MOSQ_ETC/dustgate/passwd" ]]; then
        note "keep existing $MOSQ_ETC/dustgate/passwd"
    else
        run install -m 0640 -o root -g mosquitto /dev/null "$MOSQ_ETC/dustgate/passwd"
        changed=1
    fi
    note "add users: $REPO/deploy/mosquitto/make-users.sh $MOSQ_ETC/dustgate/passwd SITE_ID"
    note "then: systemctl reload mosquitto"
    if systemd_running; then
        run systemctl enable mosquitto.service
        if [[ $changed -eq 1 ]]; then run systemctl restart mosquitto.service; fi
    fi
}

install_grafana() {
    [[ $WITH_GRAFANA -eq 1 ]] || return 0
    say "7. Grafana: data source and dashboards"
    if [[ ! -d "$GRAFANA_ETC/provisioning" ]]; then
        warn "no $GRAFANA_ETC/provisioning: install Grafana first (grafana.com APT repository)"
        return 0
    fi
    if [[ ! -d "$REPO/deploy/grafana/provisioning" ]]; then
        warn "no $REPO/deploy/grafana/provisioning in this tree: Grafana left alone"
        return 0
    fi
    local kind
    for kind in datasources dashboards; do
        run install -d -m 0755 "$GRAFANA_ETC/provisioning/$kind"
        run install -m 0640 -o root -g grafana "$REPO/deploy/grafana/provisioning/$kind/dustgate.yaml" \
            "$GRAFANA_ETC/provisioning/$kind/dustgate.yaml"
    done
    # Ours alone, so replaced wholesale: dashboards follow the installed version.
    run rm -rf "$GRAFANA_LIB/dashboards/dustgate"
    run install -d -m 0755 "$GRAFANA_LIB/dashboards/dustgate"
    local board
    for board in "$REPO"/deploy/grafana/dashboards/*.json; do
        [[ -e "$board" ]] || continue # no dashboards at all: the glob stays literal
        run install -m 0644 "$board" "$GRAFANA_LIB/dashboards/dustgate/"
    done
    if systemd_running; then run systemctl try-restart grafana-server.service; fi
}

do_install() {
    install_packages
    create_user
    install_program
    install_configs
    install_units
    install_mosquitto
    install_grafana
    say "done"
}

# ------------------------------------------------------------------- uninstall

do_uninstall() {
    say "1. stop and remove units"
    if systemd_running; then
        run systemctl disable --now "$AGENT_UNIT" "$RULES_UNIT" || true
    fi
    local unit
    for unit in "$AGENT_UNIT" "$RULES_UNIT"; do
        run rm -f "$UNIT_DIR/$unit"
        run rm -rf "$UNIT_DIR/$unit.d"
    done
    if systemd_running; then run systemctl daemon-reload; fi

    say "2. remove program $PREFIX"
    run rm -rf "${PREFIX:?}"

    if [[ $PURGE -eq 0 ]]; then
        say "kept configuration $ETC_DIR and state ${STATE_DIRS[*]} (--purge removes them)"
        say "done"
        return 0
    fi
    say "3. purge configuration, state, broker files and user"
    run rm -rf "${ETC_DIR:?}" "${STATE_DIRS[@]}"
    if [[ -e "$MOSQ_ETC/conf.d/dustgate.conf" || -e "$MOSQ_ETC/dustgate" ]]; then
        run rm -rf "$MOSQ_ETC/conf.d/dustgate.conf" "$MOSQ_ETC/dustgate"
        if systemd_running; then run systemctl try-restart mosquitto.service; fi
    fi
    local grafana_files=(
        "$GRAFANA_ETC/provisioning/datasources/dustgate.yaml"
        "$GRAFANA_ETC/provisioning/dashboards/dustgate.yaml"
        "$GRAFANA_LIB/dashboards/dustgate"
    )
    local f
    for f in "${grafana_files[@]}"; do
        if [[ -e "$f" ]]; then run rm -rf "$f"; fi
    done
    if getent passwd "$SERVICE_USER" >/dev/null; then
        run userdel "$SERVICE_USER"
    fi
    say "done"
}

main() {
    parse_args "$@"
    if [[ $DRY_RUN -eq 1 ]]; then
        say "dry run: nothing is changed"
    elif [[ $EUID -ne 0 ]]; then
        die "run as root (sudo), or with --dry-run to see the steps"
    fi
    if [[ $UNINSTALL -eq 1 ]]; then do_uninstall; else do_install; fi
}

main "$@"
