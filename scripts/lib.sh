# Shared by scripts/serve and scripts/test: make ./.venv with aiobroker installed (editable), once.
step() { printf '\n==> %s\n' "$*" >&2; }

ensure_venv() {
    local extra="${1:-}"
    local python="${PYTHON:-python3}"
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "error: $python not found; install Python 3.11 or newer (e.g. apt-get install python3 python3-venv)" >&2
        exit 1
    fi
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "error: aiobroker needs Python 3.11 or newer; $("$python" --version) found. Set PYTHON=/path/to/python3.11" >&2
        exit 1
    fi
    # Re-install when pyproject.toml changed since the last install (or the venv is new).
    local stamp=".venv/.installed${extra:+-$extra}"
    if [ ! -x .venv/bin/python ]; then
        step "creating .venv with $("$python" --version)"
        "$python" -m venv .venv || {
            echo "error: could not create a virtual environment; on Debian: apt-get install python3-venv" >&2
            exit 1
        }
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        step "installing aiobroker${extra:+ with its $extra dependencies} into .venv"
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extra:+[$extra]}"
        touch "$stamp"
    fi
}

# Debian packages the tests need, as PACKAGE:COMMAND (the command that shows the package is there, so a machine that
# has it some other way is left alone). iproute2: `ip`, for the network-namespace tests (tests/netns.py).
# dnsmasq-base: `dnsmasq`, the DNS server the dns_srv resolver's tests run on 127.0.0.1 (tests/dnsmasq.py). The
# binary alone, not Debian's `dnsmasq` package: that one adds a system service which starts on install (outside
# containers with a policy-rc.d) and takes port 53 on the machine; dnsmasq-base has no service to start or stop.
# chromium and chromium-driver: `chromium` and `chromedriver`, the headless browser and its WebDriver that the web
# console's tests click through (tests/test_console_browser.py); Debian builds both from one source, so they match.
# postgresql: `initdb` and `postgres` (under /usr/lib/postgresql/VERSION/bin), the real server the PostgreSQL store's
# tests start in a temporary directory of their own (tests/postgres.py); installed without the system cluster Debian
# would otherwise create and start (create_main_cluster = false), so nothing listens on the machine's port 5432.
TEST_SYSTEM_PACKAGES=(iproute2:ip dnsmasq-base:dnsmasq chromium:chromium chromium-driver:chromedriver postgresql:initdb)

have_command() {
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] \
        || compgen -G "/usr/lib/postgresql/*/bin/$1" >/dev/null
}

ensure_system_packages() {
    local entry missing=()
    for entry in "${TEST_SYSTEM_PACKAGES[@]}"; do
        have_command "${entry#*:}" || missing+=("${entry%%:*}")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "warning: missing system packages: ${missing[*]}; not root or no apt-get, so not installing them:" \
            "the network-namespace, DNS and browser tests will be skipped (install them, or run scripts/test as root on Debian)" >&2
        return 0
    fi
    step "installing system packages for the tests: ${missing[*]}"
    if [[ " ${missing[*]} " == *" postgresql "* ]]; then
        mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/aiobroker-tests.conf
    fi
    # Could install but did not: fail rather than let the namespace and browser tests quietly turn into skips.
    DEBIAN_FRONTEND=noninteractive apt-get update -q \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        || { echo "error: apt-get could not install ${missing[*]}" >&2; exit 1; }
}
