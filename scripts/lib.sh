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
