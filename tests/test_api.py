"""The public API: `import edge` stays torch-free, and every exported name resolves."""

from __future__ import annotations

import subprocess
import sys


def test_import_edge_is_light_and_every_public_name_resolves():
    code = ("import sys, edge; assert 'torch' not in sys.modules, 'import edge pulled in torch'; "
            "[getattr(edge, n) for n in edge.__all__]; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
