#!/usr/bin/env bash
# Create or update the mosquitto password file for dustgate.
#
# One MQTT user per site, username = site id (the ACL in this directory scopes
# each such user to dustgate/v1/<site>/...), plus the rule engine user
# "dustgate-rules". Passwords are hashed by mosquitto_passwd.
#
#   make-users.sh [--acl ACL_FILE]... PASSWORD_FILE SITE[:PASSWORD]...
#
# - A site id may not be the name of a service account: every `user` line of
#   the ACL names one (its rights plus a gateway's would go to whoever logs in
#   as that site). The names are read from the ACL files themselves: the `acl`
#   beside PASSWORD_FILE (the one the broker uses, with any users added there),
#   the `acl` beside this script, and each --acl file.
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
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR

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

# acl_users FILE...: the user names of every `user` line (mosquitto takes the rest
# of the line after "user", surrounding blanks removed), one a line.
acl_users() {
    sed -n 's/^[[:space:]]*user[[:space:]]\{1,\}\(.*[^[:space:]]\)[[:space:]]*$/\1/p' "$@"
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
    local acls=()
    while [[ $# -ge 1 ]]; do
        case "$1" in
        -h | --help) usage ;;
        --acl)
            [[ $# -ge 2 ]] || usage
            [[ -r "$2" ]] || die "cannot read ACL file '$2'"
            acls+=("$2")
            shift 2
            ;;
        *) break ;;
        esac
    done
    [[ $# -ge 1 ]] || usage
    local file=$1
    shift

    command -v mosquitto_passwd >/dev/null ||
        die "mosquitto_passwd not found (Debian package: mosquitto)"

    local candidate
    for candidate in "$(dirname "$file")/acl" "$SCRIPT_DIR/acl"; do
        [[ -r "$candidate" ]] && acls+=("$candidate")
    done
    [[ ${#acls[@]} -gt 0 ]] || die "no ACL file found (give one with --acl)"
    local services=()
    mapfile -t services < <(acl_users "${acls[@]}")
    local service known=0
    for service in "${services[@]}"; do
        [[ "$service" != "$ENGINE_USER" ]] || known=1
    done
    [[ $known -eq 1 ]] || die "the ACL (${acls[*]}) has no 'user $ENGINE_USER' line"

    local entry site password
    # Validate everything before touching the file.
    for entry in "$@"; do
        site=${entry%%:*}
        [[ "$site" =~ ^[a-z0-9_-]+$ ]] ||
            die "site id '$site' must match [a-z0-9_-]+ (it is a topic level)"
        for service in "${services[@]}"; do
            [[ "$site" != "$service" ]] ||
                die "'$site' is a service account of the ACL ('user $service'), not a site id"
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
