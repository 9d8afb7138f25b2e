"""The operator package stays light: the operator image has no torch, transformers, TRL or vLLM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

OPERATOR_DIR = Path(__file__).resolve().parents[2] / "operator"


def test_importing_the_operator_imports_no_ml_framework() -> None:
    code = ("import sys, spa_operator.main; "
            "heavy = {'torch', 'transformers', 'trl', 'vllm', 'accelerate'} & set(sys.modules); "
            "sys.exit(f'imported {sorted(heavy)}' if heavy else 0)")
    env = {**os.environ, "PYTHONPATH": str(OPERATOR_DIR)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr or out.stdout
