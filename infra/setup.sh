#!/usr/bin/env bash
# Idempotent set-up of a development/CI machine. Every step checks first and does nothing when
# its result is already in place, so a warm run takes a few seconds.
#   - .venv with the project installed (re-installed when pyproject.toml/constraints.txt change)
#   - Apache Kafka broker jars in ~/.cache/imx/kafka-<version>/libs (resolved by Maven)
#   - FerretDB (MongoDB wire protocol, on PostgreSQL) built from source into ~/.cache/imx/bin
#   - Helm built from source into ~/.cache/imx/bin (lints and renders charts/imx in the tests)
#   - PostgreSQL 15 (FerretDB's backend; tools/devstack runs its own cluster under var/), dcmtk,
#     dicom3tools, orthanc and orthanc-dicomweb from the Debian archive
#   - generated protobuf code in services/proto_gen
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CACHE="${IMX_CACHE:-$HOME/.cache/imx}"
FERRETDB_VERSION="v1.24.2"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' infra/kafka/pom.xml)"
KAFKA_LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
FERRETDB_BIN="$CACHE/bin/ferretdb"
HELM_VERSION="v3.22.0"
HELM_BIN="$CACHE/bin/helm"
VENV="$ROOT/.venv"
STAMP="$VENV/.imx-install-stamp"

step() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
need() { # need COMMAND WHY
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH; it is needed $2. Install it and re-run."
}

# --- Tools -------------------------------------------------------------------------------------
# java runs Kafka, so it is always needed; mvn and go only when their artefact is not cached yet.
need java "to run the Kafka broker (Java 17 or newer)"
java_major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
[[ -n "$java_major" && "$java_major" -ge 17 ]] || die "Java 17 or newer is needed for Kafka (found '${java_major:-unknown}')."

# Which Python 3.11: a machine may hold several builds of it (here pyenv's on PATH, and Debian's in
# /usr/bin). Debian's is built with profile-guided optimisation and LTO and links libpython statically;
# pyenv builds without either by default (here also as a shared library), and ran every Python service
# of `make bench` with 12-16% more CPU (README, "Figures", 2026-12-05). So the first interpreter that is
# not linked against a shared libpython and can make a virtual environment is taken, else the first
# that can; IMX_PYTHON names one outright. The container image's python:3.11 is built with both too.
python_candidates() {
  type -ap python3.11 || true
  echo /usr/bin/python3.11
}
choose_python() {
  local candidate real fallback=""
  while read -r candidate; do
    # A pyenv shim is a script; the interpreter it runs names itself.
    real="$("$candidate" -c 'import ensurepip, sys, venv; assert sys.version_info >= (3, 11); print(sys.executable)' 2>/dev/null)" || continue
    if ! ldd "$real" 2>/dev/null | grep -q 'libpython'; then
      echo "$real"
      return
    fi
    fallback="${fallback:-$real}"
  done < <(python_candidates)
  echo "$fallback"
}
PYTHON="${IMX_PYTHON:-$(choose_python)}"
[[ -n "$PYTHON" ]] || die "no Python 3.11 with venv found ('python3.11' on PATH or /usr/bin; or set IMX_PYTHON to a Python 3.11+ interpreter)."
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than Python 3.11."

# --- Python virtual environment ----------------------------------------------------------------
install_hash="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
# The interpreter a virtual environment was made with (its pyvenv.cfg; empty when it does not say).
venv_base() { sed -n 's/^executable = //p' "$VENV/pyvenv.cfg" 2>/dev/null || true; }
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  step "creating .venv with $PYTHON"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
elif [[ -n "$(venv_base)" && "$(realpath "$(venv_base)")" != "$(realpath "$PYTHON")" ]]; then
  step "re-creating .venv with $PYTHON (it was made with $(venv_base))"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$install_hash" ]]; then
  step "installing the project into .venv (pyproject.toml or constraints.txt changed)"
  # pip's build backend is chatty on stderr; keep its output in a log and show it only on failure.
  log="$VENV/.imx-install.log"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
    "$VENV/bin/python" -m pip install -c constraints.txt -e '.[dev]'; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "pip install failed (full output in $log)"
  fi
  echo "$install_hash" >"$STAMP"
else
  step ".venv up to date"
fi

# --- Kafka broker jars -------------------------------------------------------------------------
[[ -n "$KAFKA_VERSION" ]] || die "could not read <kafka.version> from infra/kafka/pom.xml"
if [[ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" && -f "$KAFKA_LIBS/kafka-tools-$KAFKA_VERSION.jar" ]]; then
  step "Kafka $KAFKA_VERSION jars cached"
else
  need mvn "to download the Kafka $KAFKA_VERSION jars (Maven 3.8 or newer)"
  step "fetching Kafka $KAFKA_VERSION jars into $KAFKA_LIBS"
  # Copy into a scratch folder and rename at the end, so an interrupted run never looks complete.
  rm -rf "$KAFKA_LIBS.partial"
  mkdir -p "$(dirname "$KAFKA_LIBS")"
  log="$(dirname "$KAFKA_LIBS")/mvn.log"
  if ! mvn -B -f infra/kafka/pom.xml dependency:copy-dependencies \
    -DoutputDirectory="$KAFKA_LIBS.partial" -DincludeScope=runtime >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "mvn could not fetch the Kafka jars (full output in $log)"
  fi
  rm -rf "$KAFKA_LIBS"
  mv "$KAFKA_LIBS.partial" "$KAFKA_LIBS"
fi

# --- FerretDB ----------------------------------------------------------------------------------
if [[ -x "$FERRETDB_BIN" ]] && "$FERRETDB_BIN" --version >/dev/null 2>&1; then
  step "FerretDB cached ($FERRETDB_BIN)"
else
  need go "to build FerretDB $FERRETDB_VERSION (Go 1.22 or newer)"
  step "building FerretDB $FERRETDB_VERSION into $FERRETDB_BIN"
  # `go install` yields a binary that panics at start: FerretDB embeds build/version/version.txt,
  # which is empty in the module archive. Build from a writable copy with the file filled in.
  src="$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  cp -r "$src/." "$work/"
  chmod -R u+w "$work"
  echo "$FERRETDB_VERSION" >"$work/build/version/version.txt"
  mkdir -p "$(dirname "$FERRETDB_BIN")"
  (cd "$work" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -o "$FERRETDB_BIN.partial" ./cmd/ferretdb)
  mv "$FERRETDB_BIN.partial" "$FERRETDB_BIN"
  "$FERRETDB_BIN" --version >/dev/null || die "the FerretDB build at $FERRETDB_BIN does not start"
fi

# --- Helm --------------------------------------------------------------------------------------
# Only the chart test uses it (helm lint/template; nothing is installed into a cluster).
if [[ -x "$HELM_BIN" && "$("$HELM_BIN" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; then
  step "Helm $HELM_VERSION cached ($HELM_BIN)"
else
  need go "to build Helm $HELM_VERSION (Go 1.26 or newer)"
  step "building Helm $HELM_VERSION into $HELM_BIN (about 5 minutes the first time)"
  # A plain `go install` reports version "v3.22" and renders charts for Kubernetes 1.20: Helm's own
  # Makefile sets both with -ldflags, the Kubernetes version from the client-go it is built with.
  helm_pkg="helm.sh/helm/v3"
  helm_mod="$(go mod download -json "$helm_pkg@$HELM_VERSION" |
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')"
  k8s_minor="$(sed -n 's:^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*:\1:p' "$helm_mod")"
  [[ -n "$k8s_minor" ]] || die "could not read the client-go version from $helm_mod"
  ldflags="-s -w -X $helm_pkg/internal/version.version=$HELM_VERSION"
  for pkg in pkg/chartutil pkg/lint/rules; do
    ldflags+=" -X $helm_pkg/$pkg.k8sVersionMajor=1 -X $helm_pkg/$pkg.k8sVersionMinor=$k8s_minor"
  done
  # Built into a scratch folder and moved at the end, so an interrupted build never looks complete.
  rm -rf "$HELM_BIN.partial"
  mkdir -p "$HELM_BIN.partial"
  GOBIN="$HELM_BIN.partial" CGO_ENABLED=0 go install -ldflags "$ldflags" "$helm_pkg/cmd/helm@$HELM_VERSION"
  mv "$HELM_BIN.partial/helm" "$HELM_BIN"
  rm -rf "$HELM_BIN.partial"
  "$HELM_BIN" version >/dev/null || die "the Helm build at $HELM_BIN does not start"
fi

# --- Debian packages ---------------------------------------------------------------------------
# PostgreSQL 15 is FerretDB's backend (tools/devstack starts its own cluster, never the package's
# service); the DICOM tools are used by the e2e tests, Chromium and its driver by the analysts' page test
# (tests/e2e/test_audit_page.py). Only what is missing is installed.
PG_BIN="${IMX_POSTGRES_BIN:-/usr/lib/postgresql/15/bin}"
pg_ok() { [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_isready" && "$("$PG_BIN/postgres" --version 2>/dev/null)" == *" 15."* ]]; }
missing=()
pg_ok || missing+=(postgresql-15)
command -v storescu >/dev/null || missing+=(dcmtk)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
{ command -v Orthanc >/dev/null || [[ -x /usr/sbin/Orthanc ]]; } || missing+=(orthanc)
dpkg-query -W -f='${Status}' orthanc-dicomweb 2>/dev/null | grep -q 'ok installed' || missing+=(orthanc-dicomweb)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [[ ${#missing[@]} -eq 0 ]]; then
  step "PostgreSQL 15, dcmtk, dicom3tools, orthanc, orthanc-dicomweb, chromium, chromium-driver installed"
else
  command -v apt-get >/dev/null || die "${missing[*]} missing and apt-get is not available; install them with your package manager (PostgreSQL 15 in $PG_BIN, or set IMX_POSTGRES_BIN)."
  SUDO=""
  if [[ "$(id -u)" -ne 0 ]]; then
    need sudo "to install ${missing[*]} as a non-root user"
    SUDO="sudo"
  fi
  step "installing ${missing[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  pg_ok || die "PostgreSQL 15 is still not in $PG_BIN after installing postgresql-15 (Debian 12 has it; elsewhere install PostgreSQL 15 and set IMX_POSTGRES_BIN to its bin folder)."
fi
if [[ "$(id -u)" -eq 0 ]] && ! id -u postgres >/dev/null 2>&1; then
  die "running as root, PostgreSQL must run as the 'postgres' user, which does not exist (Debian's postgresql-common creates it)."
fi

# --- Generated protobuf code -------------------------------------------------------------------
# Regenerated only when a .proto or the generator changed (`make proto` forces it): rewriting the
# modules under a test run that is importing them would break that run.
proto_stamp="services/proto_gen/.imx-stamp"
if [[ -f "$proto_stamp" && -z "$(find proto tools/gen_proto.py -newer "$proto_stamp" -print -quit)" ]]; then
  step "protobuf code up to date"
else
  "$VENV/bin/python" tools/gen_proto.py | sed 's/^/setup: /'
  touch "$proto_stamp"
fi

step "done"
