#!/usr/bin/env bash
# Offline checks of the install manifests (no cluster needed):
#   1. every YAML document parses and names apiVersion, kind and metadata.name;
#   2. every kustomization references files and directories that exist, and every manifest
#      file is referenced by exactly one kustomization (nothing silently left out);
#   3. with kubectl: `kubectl kustomize manifests/` builds, and every container of the result
#      runs the one image set in manifests/base/kustomization.yaml;
#   4. with kubernetes-validate (pip), the built-in kinds match the Kubernetes 1.30 schemas
#      (strict: unknown fields are errors);
#   5. with a strait binary: `strait check` finds no problem in the examples.
# Needs python3 with PyYAML (`python3 -m pip install pyyaml`). Exit status 0 only if all pass.
#
# Usage: manifests/validate.sh [STRAIT_BINARY]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
strait="${1:-}"

if ! python3 -c 'import yaml' 2>/dev/null; then
    echo "validate.sh: python3 with PyYAML is required (python3 -m pip install pyyaml)" >&2
    exit 2
fi

failed=0
step() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; failed=1; }

step "documents parse and are named"
python3 - "$here" <<'PY' || failed=1
import os, sys, yaml

root = sys.argv[1]
bad = 0
count = 0
for dirpath, _, files in sorted(os.walk(root)):
    for f in sorted(files):
        if not f.endswith((".yaml", ".yml")):
            continue
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, root)
        try:
            with open(path) as fh:
                docs = list(yaml.safe_load_all(fh))
        except yaml.YAMLError as e:
            print(f"FAIL: {rel}: {e}", file=sys.stderr)
            bad += 1
            continue
        for i, doc in enumerate(docs, 1):
            if doc is None:
                continue
            where = f"{rel} (document {i})"
            if not isinstance(doc, dict):
                print(f"FAIL: {where}: not a mapping", file=sys.stderr)
                bad += 1
                continue
            count += 1
            if os.path.basename(path) == "kustomization.yaml":
                continue
            for field in ("apiVersion", "kind"):
                if not doc.get(field):
                    print(f"FAIL: {where}: no {field}", file=sys.stderr)
                    bad += 1
            meta = doc.get("metadata") or {}
            if not isinstance(meta, dict) or not meta.get("name"):
                print(f"FAIL: {where}: no metadata.name", file=sys.stderr)
                bad += 1
print(f"{count} documents checked")
sys.exit(1 if bad else 0)
PY

step "kustomizations reference existing files, and every file is referenced"
python3 - "$here" <<'PY' || failed=1
import os, sys, yaml

root = sys.argv[1]
bad = 0
referenced = set()
kustomizations = []
for dirpath, _, files in os.walk(root):
    if "kustomization.yaml" in files:
        kustomizations.append(os.path.join(dirpath, "kustomization.yaml"))
for k in sorted(kustomizations):
    base = os.path.dirname(k)
    with open(k) as fh:
        spec = yaml.safe_load(fh) or {}
    for entry in spec.get("resources", []) or []:
        target = os.path.normpath(os.path.join(base, entry))
        rel = os.path.relpath(k, root)
        if os.path.isdir(target):
            if not os.path.isfile(os.path.join(target, "kustomization.yaml")):
                print(f"FAIL: {rel}: {entry} is a directory without kustomization.yaml", file=sys.stderr)
                bad += 1
        elif os.path.isfile(target):
            if target in referenced:
                print(f"FAIL: {rel}: {entry} is already referenced elsewhere", file=sys.stderr)
                bad += 1
            referenced.add(target)
        else:
            print(f"FAIL: {rel}: {entry} does not exist", file=sys.stderr)
            bad += 1
# Files that must belong to a kustomization: everything under crds/ and base/.
for sub in ("crds", "base"):
    for dirpath, _, files in os.walk(os.path.join(root, sub)):
        for f in files:
            path = os.path.join(dirpath, f)
            if f.endswith(".yaml") and f != "kustomization.yaml" and path not in referenced:
                print(f"FAIL: {os.path.relpath(path, root)} is in no kustomization", file=sys.stderr)
                bad += 1
print(f"{len(kustomizations)} kustomizations checked")
sys.exit(1 if bad else 0)
PY

if command -v kubectl >/dev/null 2>&1; then
    step "kubectl kustomize builds; one image everywhere"
    built="$(mktemp)"
    trap 'rm -f "$built"' EXIT
    if kubectl kustomize "$here" >"$built"; then
        python3 - "$built" "$here/base/kustomization.yaml" <<'PY' || failed=1
import sys, yaml

with open(sys.argv[2]) as fh:
    image = (yaml.safe_load(fh) or {}).get("images", [{}])[0]
want = f"{image.get('newName', image.get('name'))}:{image.get('newTag')}"
bad = 0
kinds = {}
with open(sys.argv[1]) as fh:
    for doc in yaml.safe_load_all(fh):
        if not doc:
            continue
        kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        spec = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if c.get("image") != want:
                print(f"FAIL: {doc['kind']} {doc['metadata']['name']}: container {c['name']} runs {c.get('image')}, not {want}", file=sys.stderr)
                bad += 1
            for e in c.get("env", []):
                if e.get("name") == "STRAIT_PROXY_IMAGE" and e.get("value") != want:
                    print(f"FAIL: {doc['metadata']['name']}: STRAIT_PROXY_IMAGE is {e.get('value')}, not {want}", file=sys.stderr)
                    bad += 1
print(", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
sys.exit(1 if bad else 0)
PY
    else
        fail "kubectl kustomize $here"
    fi
else
    step "kubectl not found: kustomize build skipped"
fi

if command -v kubernetes-validate >/dev/null 2>&1 && command -v kubectl >/dev/null 2>&1; then
    step "built-in kinds match the Kubernetes 1.30 schemas"
    # Gateway API kinds have no bundled schema (a warning); `strait check` covers them.
    if kubernetes-validate --strict --quiet --no-warn -k 1.30.0 "$built" "$here"/examples/*.yaml; then
        echo "schemas ok"
    else
        fail "kubernetes-validate"
    fi
else
    step "kubernetes-validate not found: schema check skipped (python3 -m pip install kubernetes-validate)"
fi

if [ -z "$strait" ] && [ -x "$root/target/debug/strait" ]; then
    strait="$root/target/debug/strait"
fi
if [ -n "$strait" ]; then
    step "strait check on the examples"
    if "$strait" check "$here/examples" "$here/base/gatewayclasses.yaml" >/dev/null; then
        echo "no problems"
    else
        fail "strait check reported problems in the examples"
    fi
else
    step "no strait binary: strait check skipped (pass one as the first argument)"
fi

if [ "$failed" -ne 0 ]; then
    echo "validate.sh: FAILED" >&2
    exit 1
fi
echo "validate.sh: all checks passed"
