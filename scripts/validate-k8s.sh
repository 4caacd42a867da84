#!/usr/bin/env bash
# Validates deploy/kubernetes against the Kubernetes API schemas (strict: unknown fields are
# errors), for the oldest and the newest Kubernetes the manifests are meant for, with
# kubernetes-validate (PyPI; installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate >&2
fi
files=$(ls deploy/kubernetes/*.yaml | grep -v kustomization.yaml)
for v in 1.29.0 1.35.0; do
  kubernetes-validate --strict --quiet -k "$v" $files
done
# Every resource file is in the kustomization, and nothing else is.
for f in $files; do
  grep -q "^  - $(basename "$f")$" deploy/kubernetes/kustomization.yaml \
    || { echo "deploy/kubernetes/kustomization.yaml does not list $(basename "$f")" >&2; exit 1; }
done
echo "kubernetes manifests: valid against 1.29 and 1.35 (strict)"
