# Shared by demo.sh and test.sh: install what is missing, configure, build.
# Source it from the repository root; it defines functions only.

PACKAGES=(libtorch-dev libcli11-dev nlohmann-json3-dev libzstd-dev libxxhash-dev doctest-dev
          meson ninja-build pkg-config python3-torch python3-torchvision g++)
# Debian's python3-torch lives here; a python3 earlier on PATH (pyenv, a venv) may have no torch.
PYTHON=/usr/bin/python3
BUILD=${ZCWRAP_BUILD:-build}

section() { printf '\n== %s ==\n' "$*"; }
# Shows a command, then runs it.
show() {
  printf '$ %s\n' "$*"
  "$@"
}
die() {
  printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
  exit 1
}

# Installs the Debian packages that are missing, and only those.
ensure_packages() {
  local missing=() package status
  for package in "${PACKAGES[@]}"; do
    # Not `dpkg -s | grep -q`: grep quitting early can fail the pipe under pipefail.
    status=$(dpkg -s "$package" 2>/dev/null || true)
    [[ $status == *"Status: install ok installed"* ]] || missing+=("$package")
  done
  if ((${#missing[@]} == 0)); then
    echo "all ${#PACKAGES[@]} packages are installed"
    return
  fi
  ((EUID == 0)) || die "missing packages: ${missing[*]}; run this as root, or: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  show apt-get update
  show apt-get install -y "${missing[@]}"
}

# Configures $BUILD once (reused after), then builds everything.
build_all() {
  if [[ -f $BUILD/meson-private/coredata.dat ]]; then
    echo "reusing $BUILD/ (configured before)"
  else
    show meson setup "$BUILD"
  fi
  show ninja -C "$BUILD"
}
