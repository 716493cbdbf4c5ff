"""A GGUF metadata field gguf-py cannot read is an error naming the field, never silently dropped
(a dropped rope or norm field would fall back to a default and change the model)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from edge.errors import ModelLoadError
from edge.model.gguf import read_metadata


def test_unreadable_field_is_named(tmp_path):
    path = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_key_value("general.name", b"tiny\xff\xfe", gguf.GGUFValueType.STRING)  # not UTF-8
    w.add_tensor("token_embd.weight", np.zeros((16, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match=r"GGUF metadata field 'general.name' .*STRING.* cannot be read "
                                             r"\(UnicodeDecodeError") as e:
        read_metadata(gguf.GGUFReader(str(path)))
    assert isinstance(e.value.__cause__, UnicodeDecodeError)
