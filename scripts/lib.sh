# Shared by the scripts: install what the project uses, from Debian's packages, when it is missing.

# as_root CMD...: run as root, through sudo when not root already.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root to run: $*" >&2
        return 1
    fi
}

# ensure_commands COMMAND:PACKAGE...: installs PACKAGE for every COMMAND not on the PATH.
ensure_commands() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# ensure_python_requirements FILE: pip-installs FILE's pinned packages unless they import already.
# $1 holds one `name==version` per line; the import name is the package name without "io"
# (grpcio -> grpc).
ensure_python_requirements() {
    local file=$1 missing=0 line name
    while read -r line; do
        case "$line" in ''|'#'*) continue ;; esac
        name=${line%%==*}
        python3 -c "import ${name%io}" >/dev/null 2>&1 || missing=1
    done <"$file"
    [ "$missing" -eq 0 ] && return 0
    echo "installing Python packages from $file" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r "$file"
}
