"""The models the CI checks run on: the fixtures, then the shared models, each file once."""

import glob
import hashlib
import os


def models(root, skip_external=False):
    """Fixtures (without `-external` copies when `skip_external`), then `../shared/models`;
    a fixture that is a byte copy of a shared model is listed once."""
    found = sorted(glob.glob(os.path.join(root, "fixtures", "*.onnx")))
    if skip_external:
        found = [m for m in found if "-external" not in m]
    found += sorted(glob.glob(os.path.join(root, "..", "shared", "models", "*.onnx")))
    seen, unique = set(), []
    for m in found:
        with open(m, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            unique.append(m)
    return unique
