#!/usr/bin/env bash
# Installs detectron2 into the Python given as $1 (default: python3), unless it already imports.
#
# detectron2 is not on PyPI and its official route (a build from GitHub source) needs network access
# these machines lack. The verified fallback is PyPI's sal-detectron2==0.7.2: a wheel of upstream
# detectron2 main at commit a59f0563 (2024-04-17). It is tagged cp310 and carries a cp310 `_C`
# extension that Python 3.11 never loads; everything box detection needs works without `_C`
# (ROIAlign and NMS come from torchvision, COCOEvaluator falls back to pycocotools).
set -euo pipefail
PY=${1:-python3}
WHEEL=sal-detectron2==0.7.2
SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561

if "$PY" -c "import detectron2, detectron2.modeling" 2>/dev/null; then
  echo "detectron2 already installed: $("$PY" -c 'import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))')"
  exit 0
fi

SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "ERROR installing detectron2: $*" >&2
  echo "Build it from source instead (see README, 'Installing detectron2') and rerun." >&2; exit 1; }

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
  -d "$TMP" "$WHEEL" || fail "could not download $WHEEL from the package index"
FILE=$(ls "$TMP"/*.whl) || fail "no wheel downloaded for $WHEEL"
GOT=$(sha256sum "$FILE" | cut -d' ' -f1)
[ "$GOT" = "$SHA256" ] || fail "sha256 of $(basename "$FILE") is $GOT, expected $SHA256"

"$PY" -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.10 \
  --implementation cp --target "$TMP/site" "$FILE" || fail "pip could not unpack $FILE"
# The wheel ships a top-level `tools` package that could shadow this project's tools/: drop it.
rm -rf "$TMP/site/tools" "$TMP/site/bin"
cp -r "$TMP/site/." "$SITE/"
"$PY" -c "import detectron2.modeling, detectron2.engine" || fail "detectron2 was copied to $SITE but does not import"
echo "detectron2 installed from $WHEEL into $SITE"
