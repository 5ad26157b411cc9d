"""The model builder's helpers that need no model (models are built in the trainer's tests)."""

from __future__ import annotations

import json
import subprocess
import sys

from fedmask.adapter.model import MODEL_CODE


def test_import_model_code_imports_what_a_model_load_needs():
    # In a fresh interpreter: here the test session has imported transformers long ago.
    script = (
        "import json, sys\n"
        "from fedmask.adapter.model import MODEL_CODE, import_model_code\n"
        "before = [m for m in MODEL_CODE if m in sys.modules]\n"
        "seconds = import_model_code()\n"
        "after = [m for m in MODEL_CODE if m in sys.modules]\n"
        "print(json.dumps({'before': before, 'after': after, 'seconds': seconds}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["before"] == [] and report["after"] == list(MODEL_CODE)
    assert report["seconds"] > 0
