"""edge.probe's int8 rate: measured through onnxruntime, and an error (not a rate of 0 that a
profile would carry as measured) when onnxruntime does not import."""

from __future__ import annotations

import sys

import pytest

from edge.errors import EdgeError
from edge.probe import measure_matmul_int8


def test_int8_rate_is_measured():
    """A 128^3 MatMulInteger takes far less than a second on any host: the rate is above 2 * 128^3 / s."""
    assert measure_matmul_int8(n=128, repeats=2, threads=1) > 2 * 128**3


def test_int8_rate_without_onnxruntime_raises(monkeypatch):
    """An onnxruntime that does not import (here: sys.modules entry None, as Python treats a blocked
    module) raises EdgeError naming it, the ImportError chained."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(EdgeError, match="int8 matmul rate not measured: .*onnxruntime") as e:
        measure_matmul_int8(n=16, repeats=1)
    assert isinstance(e.value.__cause__, ImportError)
