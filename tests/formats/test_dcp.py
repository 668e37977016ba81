"""The file form of a distributed checkpoint (theta_zarr.formats.dcp): hostile metadata."""

from __future__ import annotations

import base64
import json
import struct

import helpers
import numpy as np
import pytest

from theta_zarr.formats import FormatError


def consolidated(info: object) -> bytes:
    """A safetensors file as a DCP smudge writes it: one tensor ``w`` and the ``dcp``
    metadata ``info`` (JSON) first among the sorted metadata keys."""
    w = np.arange(6, dtype=np.float32)
    header = {"__metadata__": {"dcp": json.dumps(info) if not isinstance(info, str) else info,
                               "format": "pt"},
              "w": {"dtype": "F32", "shape": [6], "data_offsets": [0, w.nbytes]}}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + w.tobytes()


def info(**over) -> dict:
    base = {"format": {"shards": {"w": [[[0], [6]]]}, "bytes": ["opt"]},
            "chunk_shapes": {"w": [6], "opt": [3]},
            "bytes": {"opt": base64.b64encode(b"abc").decode()}}
    return {**base, **over}


def test_a_consolidated_file_cleans_to_a_dcp_manifest(tmp_path):
    m = helpers.clean_manifest(consolidated(info()), tmp_path, "c.safetensors")
    assert m.format_name == "dcp" and set(m.params) == {"w", "opt"}


def test_metadata_naming_another_format_is_still_a_dcp_manifest(tmp_path):
    data = consolidated(info(format={"name": "safetensors", "shards": {"w": [[[0], [6]]]},
                                     "bytes": ["opt"]}))
    assert helpers.clean_manifest(data, tmp_path, "c.safetensors").format_name == "dcp"


@pytest.mark.parametrize("shape", [["a"], None, [[1]], "3"])
def test_a_bytes_item_with_a_chunk_shape_that_is_no_shape_is_chunked_by_policy(tmp_path,
                                                                               shape):
    data = consolidated(info(chunk_shapes={"w": [6], "opt": shape}))
    m = helpers.clean_manifest(data, tmp_path, "c.safetensors")
    assert m.params["opt"].shape == (3,)


def test_metadata_nested_too_deep_is_one_format_error(tmp_path):
    with pytest.raises(FormatError) as e:
        helpers.clean_manifest(consolidated("[" * 100_000), tmp_path, "c.safetensors")
    assert "c.safetensors" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", [{}, {"shards": {"w": "x"}, "bytes": ["opt"]},
                                 {"shards": {}, "bytes": "opt"}])
def test_metadata_whose_format_readers_refuse_is_refused_when_added(tmp_path, fmt):
    """A ``dcp`` metadata key that is JSON with the three fields but a format no reader
    accepts (a safetensors file of someone else's with a ``dcp`` key): the clean gave a
    manifest, ``git add`` committed it, and every checkout then failed with ``'format'
    must be an object with a valid 'name'``.  It is refused at the clean, in one line
    saying the key is theta-zarr's."""
    with pytest.raises(FormatError) as e:
        helpers.clean(consolidated(info(format=fmt)), tmp_path, "c.safetensors")
    msg = str(e.value)
    assert msg.startswith("c.safetensors: the 'dcp' metadata") and "\n" not in msg
    assert "rename it" in msg


def test_a_dcp_key_that_is_not_json_says_whose_key_it_is(tmp_path):
    with pytest.raises(FormatError) as e:
        helpers.clean(consolidated("v2"), tmp_path, "c.safetensors")
    assert "not JSON" in str(e.value) and "rename it" in str(e.value)
