#!/usr/bin/env bash
# Create or update the mosquitto password file for dustgate.
#
# One MQTT user per site, username = site id (the ACL in this directory scopes
# each such user to dustgate/v1/<site>/...), plus the rule engine user
# "dustgate-rules". Passwords are hashed by mosquitto_passwd.
#
#   make-users.sh PASSWORD_FILE SITE[:PASSWORD]...
#
# - A user already in the file keeps its password unless one is given, so the
#   script can be re-run to add a site without breaking the others.
# - A password not given is generated and printed once, as "user:password"
#   lines on stdout: put it in that gateway's /etc/dustgate/secrets.env
#   (DUSTGATE_MQTT_PASSWORD=...). Nothing else is printed on stdout.
# - The engine's password comes from $DUSTGATE_RULES_PASSWORD if set, else it
#   is generated when the engine user is new.
#
# After changing the file, tell a running broker: systemctl reload mosquitto
# (or send it SIGHUP).
set -euo pipefail

readonly ENGINE_USER="dustgate-rules"
# Names a site may not take: they are service accounts, and the ACL patterns
# would otherwise give a service the rights of a gateway (and vice versa).
readonly RESERVED=("$ENGINE_USER" "dustgate" "dustgate-admin" "dustgate-operator" "dustgate-console"
    "mosquitto" "root")

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
    exit 2
}

die() {
    echo "make-users.sh: $*" >&2
    exit 1
}

gen_password() {
    # 24 random bytes, base64 without characters that need quoting in env files.
    head -c 24 /dev/urandom | base64 | tr -d '/+=\n'
}

user_exists() {
    local file=$1 user=$2
    grep -q "^${user}:" "$file"
}

# set_user FILE USER PASSWORD(empty = keep or generate)
set_user() {
    local file=$1 user=$2 password=$3
    if [[ -z "$password" ]]; then
        if user_exists "$file" "$user"; then
            echo "kept existing user $user" >&2
            return 0
        fi
        password=$(gen_password)
        printf '%s:%s\n' "$user" "$password"
    fi
    mosquitto_passwd -b "$file" "$user" "$password"
    echo "set user $user" >&2
}

main() {
    [[ $# -ge 1 ]] || usage
    case "$1" in -h | --help) usage ;; esac
    local file=$1
    shift

    command -v mosquitto_passwd >/dev/null ||
        die "mosquitto_passwd not found (Debian package: mosquitto)"

    local entry site password reserved
    # Validate everything before touching the file.
    for entry in "$@"; do
        site=${entry%%:*}
        [[ "$site" =~ ^[a-z0-9_-]+$ ]] ||
            die "site id '$site' must match [a-z0-9_-]+ (it is a topic level)"
        for reserved in "${RESERVED[@]}"; do
            [[ "$site" != "$reserved" ]] || die "'$site' is reserved for a service, not a site id"
        done
    done

    umask 077
    [[ -e "$file" ]] || : >"$file"

    for entry in "$@"; do
        site=${entry%%:*}
        password=""
        [[ "$entry" == *:* ]] && password=${entry#*:}
        set_user "$file" "$site" "$password"
    done
    set_user "$file" "$ENGINE_USER" "${DUSTGATE_RULES_PASSWORD:-}"
}

main "$@"
