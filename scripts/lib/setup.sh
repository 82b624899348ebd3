# Shared set-up for scripts/*: idempotent installs of what the project needs.
# Sourced, not run. Installs only what is missing, so a second run costs seconds.

# Installs Debian packages that are not installed yet (apt-get update only when needed).
need_apt() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing Debian packages: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Adds rustup targets that are not installed yet.
need_rust_target() {
    for t in "$@"; do
        rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t"
    done
}

need_rust_component() {
    for c in "$@"; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
}

# A Python virtual environment under target/ with the given PyPI packages; prints its python.
python_env() {
    local venv="target/venv-$1"; shift
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv" >&2
    fi
    if ! "$venv/bin/python" -c "import sys" 2>/dev/null; then
        rm -rf "$venv" && python3 -m venv "$venv" >&2
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2
    echo "$PWD/$venv/bin/python"
}

# The libonnxruntime.so inside the onnxruntime wheel of the given venv python, for the `ort`
# backend (which loads it at run time through ORT_DYLIB_PATH).
ort_dylib() {
    "$1" -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[0])'
}
