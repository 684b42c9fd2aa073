#!/bin/sh
# The demo: verify the bundled example (passes), then a tampered copy (fails, exit 1).
# Usage: examples/demo.sh [PYTHON]   (PYTHON has model-integrity installed)
set -u
PYTHON=${1:-python3}
here=$(cd "$(dirname "$0")" && pwd)

echo "== 1. the example as committed: expect PASS (exit 0)"
"$PYTHON" -m integrity verify --manifest "$here/iris/model-integrity.json"
status=$?
if [ "$status" -ne 0 ]; then
    echo "demo: the untouched example did not pass (exit $status)" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -R "$here/iris" "$work/iris"
# Flip one byte in the middle of the model: same size, different content.
"$PYTHON" - "$work/iris/model.joblib" <<'PY'
import sys
path = sys.argv[1]
with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x01
    f.seek(0)
    f.write(data)
PY

echo
echo "== 2. a copy whose model.joblib had one byte flipped: expect FAIL (exit 1)"
"$PYTHON" -m integrity verify --manifest "$work/iris/model-integrity.json"
status=$?
if [ "$status" -ne 1 ]; then
    echo "demo: the tampered copy was not caught (exit $status, expected 1)" >&2
    exit 1
fi
echo
echo "demo: OK (the untouched example passed; the tampered copy failed with exit 1)"
