#!/usr/bin/env bash
# Install the given Debian packages if any is missing. Runs apt-get update once
# first. As root it runs apt-get directly; otherwise through sudo, saying why.
set -euo pipefail

missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "dustgate: missing packages ${missing[*]} and no apt-get here; install them by hand" >&2
  exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  echo "dustgate: installing Debian packages ${missing[*]} via sudo (you may be asked for your password)" >&2
  SUDO=(sudo)
else
  echo "dustgate: need root to install Debian packages: ${missing[*]}" >&2
  echo "          run: apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "dustgate: installed ${missing[*]}" >&2
