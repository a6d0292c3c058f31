# Shared by demo.sh and test.sh: install what is missing, configure, build.
# Source it from the repository root; it defines variables and functions only.
#
# zcwrap is built and tested in two LibTorch lanes:
#   torch2  the pip torch pinned in scripts/requirements.txt (a CUDA build),
#           in a virtual environment outside the clone, reused across clones
#   debian  Debian 12's libtorch-dev and python3-torch 1.13
# Each lane has its own build folder, and its fixtures come from its own
# Python's torch (meson -Dpython).

PACKAGES=(libtorch-dev libcli11-dev nlohmann-json3-dev libzstd-dev libxxhash-dev doctest-dev
          meson ninja-build pkg-config ccache python3-torch python3-torchvision g++
          python3-venv python3-dev strace)
# Debian's python3-torch lives here; the python3 first on PATH (pyenv, a venv)
# may have no torch. It also makes the torch2 lane's virtual environment.
DEBIAN_PYTHON=/usr/bin/python3
REQUIREMENTS=scripts/requirements.txt
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/zcwrap
LANES=(torch2 debian)

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

# Sets TORCH2_PYTHON: $ZCWRAP_TORCH2_PYTHON when set (a Python whose pip torch
# is already installed), else the virtual environment for the pins in
# $REQUIREMENTS, created on first use (about 3.3 GB downloaded, 5.7 GB on
# disk) and reused after: its folder is named by a hash of the pins.
ensure_venv() {
  if [[ -n ${ZCWRAP_TORCH2_PYTHON:-} ]]; then
    TORCH2_PYTHON=$ZCWRAP_TORCH2_PYTHON
    echo "using ZCWRAP_TORCH2_PYTHON=$TORCH2_PYTHON"
    return
  fi
  local venv
  venv=$CACHE/venv-$(sha256sum "$REQUIREMENTS" | cut -c1-12)
  TORCH2_PYTHON=$venv/bin/python
  if [[ -f $venv/.complete ]]; then
    echo "reusing $venv"
    return
  fi
  # An interrupted install leaves no .complete: start that one again.
  rm -rf "$venv"
  mkdir -p "$CACHE"
  show "$DEBIAN_PYTHON" -m venv "$venv"
  # Wheels are kept in $CACHE/wheels, so a new set of pins downloads only
  # what changed (torch alone is 3 GB).
  show "$venv/bin/pip" download --disable-pip-version-check --progress-bar off -d "$CACHE/wheels" -r "$REQUIREMENTS"
  show "$venv/bin/pip" install --disable-pip-version-check --progress-bar off --no-index --find-links "$CACHE/wheels" \
    -r "$REQUIREMENTS"
  touch "$venv/.complete"
}

lane_python() {
  case $1 in
    torch2) echo "$TORCH2_PYTHON" ;;
    debian) echo "$DEBIAN_PYTHON" ;;
    *) die "unknown lane '$1' (lanes: ${LANES[*]})" ;;
  esac
}

lane_build_dir() {
  case $1 in
    torch2) echo "${ZCWRAP_BUILD_TORCH2:-build-torch2}" ;;
    debian) echo "${ZCWRAP_BUILD_DEBIAN:-build-debian}" ;;
    *) die "unknown lane '$1' (lanes: ${LANES[*]})" ;;
  esac
}

# Configures lane $1's build folder (from scratch when $2 is "fresh", else
# reused if configured before), then builds everything. The torch2 lane
# always builds the fast CUDA load: it must compile and link on every run.
build_lane() {
  local lane=$1 fresh=${2:-} dir options=()
  dir=$(lane_build_dir "$lane")
  options=(-Dpython="$(lane_python "$lane")")
  # The Python package is built by pip instead (install_package), as users build it.
  if [[ $lane == torch2 ]]; then options+=(-Dcuda=enabled -Dpython_package=disabled); fi
  if [[ $fresh == fresh ]]; then rm -rf "$dir"; fi
  if [[ -f $dir/meson-private/coredata.dat ]]; then
    echo "reusing $dir/ (configured before)"
  else
    show meson setup "$dir" "${options[@]}"
  fi
  show ninja -C "$dir"
}

# The Python package, built by pip from this repository (meson-python, in
# $PACKAGE_DIR/build) against the torch2 lane's torch and installed into
# $PACKAGE_DIR/site: PYTHONPATH=$PACKAGE_DIR/site imports it. Needs ensure_venv.
PACKAGE_DIR=${ZCWRAP_BUILD_PYTHON:-build-python}
install_package() {
  show "$TORCH2_PYTHON" -m pip install --disable-pip-version-check --no-build-isolation --no-deps \
    --upgrade --target "$PACKAGE_DIR/site" --config-settings=build-dir="$PWD/$PACKAGE_DIR/build" .
}
