"""No artifact, checkpoint or config is ever loaded through pickle (or anything that executes data)."""

from __future__ import annotations

import pytest

from tests.helpers.codescan import CODE_DIRS, ROOT, pickle_findings, python_files


def test_project_code_never_unpickles():
    files = python_files()
    assert any(p.parts[-2:] == ("io", "store.py") for p in files)  # the scan does see the artifact readers
    findings = [f for p in files for f in pickle_findings(p.read_text(), str(p.relative_to(ROOT)))]
    assert findings == [], "unsafe deserialisation in " + ", ".join(CODE_DIRS) + ":\n" + "\n".join(findings)


@pytest.mark.parametrize("source", [
    "import pickle\npickle.loads(b'')",
    "import cloudpickle",
    "import dill as d",
    "from joblib import load\nload('m.joblib')",
    "import joblib\njoblib.load('m')",
    "import _pickle",
    "from pickle import loads",
    "import torch\ntorch.load('x.pt')",
    "import torch\ntorch.load('x.pt', weights_only=False)",
    "import torch\nflag = True\ntorch.load('x.pt', weights_only=flag)",
    "from torch import load\nload('x.pt')",
    "from torch import load as tl\ntl('x.pt')",
    "import torch\ntorch.serialization.load('x')",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
    "import numpy\nnumpy.load('a.npy', allow_pickle=1 == 1)",
    "import pandas as pd\npd.read_pickle('x')",
    "import yaml\nyaml.load(open('c'))",
    "import yaml\nyaml.unsafe_load('a: 1')",
    "import yaml\nyaml.load('a', Loader=yaml.FullLoader)",
    "import torch\ntorch.save({}, 'x', pickle_module=None)",
    "import shelve",
    "import marshal",
])
def test_scanner_catches_unsafe_loading(source):
    assert pickle_findings(source), source


@pytest.mark.parametrize("source", [
    '"""Artifacts are never unpickled; see pickle docs."""',
    "import torch\ntorch.load('x.pt', weights_only=True)",
    "import numpy as np\nnp.load('a.npz')",
    "import numpy as np\nnp.load('a.npz', allow_pickle=False)",
    "import yaml\nyaml.safe_load('a: 1')",
    "import yaml\nyaml.load('a', Loader=yaml.SafeLoader)",
    "from safetensors.torch import load\nload(b'')",
    "import json\njson.load(open('x'))",
])
def test_scanner_allows_safe_loading(source):
    assert pickle_findings(source) == []
