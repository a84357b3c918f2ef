#!/usr/bin/env bash
# Debian packages the test suite needs: Chromium (browser tests), the MariaDB ODBC driver and
# unixODBC (the pyodbc path that SQL Server also uses), and wrk (the benchmark's HTTP load).
# Installs only what is missing.
set -euo pipefail

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
grep -qs '^\[MariaDB Unicode\]' /etc/odbcinst.ini || need+=(odbc-mariadb)
[ -e /usr/lib/x86_64-linux-gnu/libodbc.so.2 ] || ldconfig -p 2>/dev/null | grep -q 'libodbc.so.2' || need+=(unixodbc)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: missing ${need[*]}, but this is not root on Debian; tests that need them will skip" >&2
  exit 0
fi
echo "install-system-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" unixodbc >/dev/null
