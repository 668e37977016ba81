"""NumPy ``.npz`` archives (stored or deflated) and single ``.npy`` arrays.

Each member's array is streamed out of the archive into the ChunkWriter; the
rebuild writes the same members, in the same order, with headers and zip
settings as ``numpy.savez`` / ``savez_compressed`` write them.  Object arrays
(pickles) are refused.
"""

from __future__ import annotations

import ast
import io
import shutil
import zipfile
from typing import TYPE_CHECKING, Any, BinaryIO

from ..chunkreader import ChunkReader
from ..chunkwriter import ChunkWriter
from ..dtypes import DTypeError, by_name, from_numpy
from ..manifest import Manifest, ManifestError
from ..streams import named, scratch_file, scratch_name
from .base import Format, FormatError, NotWeights, Source, TensorView
from .zipinfo import first_member

if TYPE_CHECKING:
    import numpy as np

NPY_MAGIC = b"\x93NUMPY"
EMPTY_ZIP = b"PK\x05\x06"  # an archive that is only its end-of-central-directory record


def _parse_npy_header(read_exact, where: str
                      ) -> tuple[np.dtype, tuple[int, ...], bool, tuple[int, int]]:
    """(dtype, shape, Fortran order, format version) of a .npy header (NEP 1)."""
    magic = read_exact(8)
    if not magic.startswith(NPY_MAGIC):
        raise FormatError(f"{where}: not a .npy array")
    major = magic[6]
    size_len = 2 if major == 1 else 4
    hlen = int.from_bytes(read_exact(size_len), "little")
    head = read_exact(hlen)
    from numpy.lib import format as npformat  # here: the plug-in loads with every format

    try:
        d = ast.literal_eval(head.decode("latin1" if major < 3 else "utf-8"))
        dtype = npformat.descr_to_dtype(d["descr"])
        shape = tuple(int(s) for s in d["shape"])
        fortran = bool(d["fortran_order"])
    except (ValueError, SyntaxError, KeyError, TypeError):
        raise FormatError(f"{where}: bad .npy header") from None
    if dtype.hasobject:  # never unpickled; kept as opaque bytes where that is allowed
        raise NotWeights(f"{where}: object arrays (pickles) are not supported")
    return dtype, shape, fortran, (major, magic[7])


def _add_npy(read_exact, readinto, writer: ChunkWriter, name: str, where: str) -> dict:
    dtype, shape, fortran, version = _parse_npy_header(read_exact, where)
    try:
        dt = from_numpy(dtype)
    except DTypeError as e:  # strings, dates, big-endian: a valid array, not weights
        raise NotWeights(f"{where}: {e}") from None
    # A Fortran-ordered array's bytes are the C-ordered bytes of its transpose.
    stored_shape = tuple(reversed(shape)) if fortran else shape
    try:
        writer.add_stream(name, dt, stored_shape, readinto)
    except ManifestError as e:
        raise FormatError(str(e)) from None
    rec: dict[str, Any] = {"param": name, "fortran_order": fortran}
    if version != (1, 0):  # written again in the same version, so the bytes are the same
        rec["version"] = list(version)
    return rec


def _write_npy(out: BinaryIO, entry, fortran: bool, reader: ChunkReader,
               version: Any = None) -> None:
    """The .npy file of ``entry``: its header in ``version`` (the file's own, [2, 0] or
    [3, 0]; else 1.0, or 2.0 when the header needs it, as ``np.save`` chooses), then
    the data."""
    from numpy.lib import format as npformat

    dtype = by_name(entry.dtype).numpy
    shape = tuple(reversed(entry.shape)) if fortran else tuple(entry.shape)
    header = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": fortran, "shape": shape}
    if version in ([2, 0], [3, 0]):
        # 3.0 is 2.0 with a UTF-8 header; the headers of the dtypes stored as weights are
        # ASCII, so only the version byte differs (numpy has no public 3.0 writer)
        buf = io.BytesIO()
        npformat.write_array_header_2_0(buf, header)
        data = bytearray(buf.getvalue())
        data[6] = version[0]
        out.write(bytes(data))
    else:
        try:
            npformat.write_array_header_1_0(out, header)
        except ValueError:
            npformat.write_array_header_2_0(out, header)
    for chunk in reader.iter_entry(entry):
        out.write(chunk)


def _stream_reader(stream, where: str):
    def read_exact(n: int) -> bytes:
        data = stream.read(n)
        if len(data) != n:
            raise FormatError(f"{where}: truncated")
        return data

    return read_exact, stream.readinto


def _array_view(name: str, entry, fortran: bool) -> TensorView:
    """How a reader gets the array stored as parameter ``name``: a Fortran-ordered array
    is stored as its C-ordered transpose, so it is read back with its own shape and
    Fortran strides (what ``np.load`` returns), as a view of those bytes."""
    if not fortran or len(entry.shape) < 2:
        return TensorView(name)
    return TensorView.transpose_of(name, tuple(entry.shape))


class NpyFormat(Format):
    """A single ``.npy`` array (NumPy's NPY format, ``numpy.lib.format``, versions 1.0 to
    3.0), stored as one parameter named ``array``.

    A Fortran-ordered array is stored as the C-ordered transpose of its shape, so its
    bytes are the file's; the rebuild writes the header in the file's own version.
    Clean raises FormatError for a bad or truncated header or data past the array, and
    NotWeights for object arrays (pickles) and dtypes theta-zarr cannot store (strings,
    big-endian), which ``checkpoint.clean`` then keeps as opaque bytes.
    """

    name = "npy"
    extensions = (".npy",)

    def sniff(self, head: bytes) -> bool:
        return head.startswith(NPY_MAGIC)

    def clean(self, source: Source, writer: ChunkWriter) -> dict[str, Any]:
        member = _add_npy(lambda n: source.read_exact(n, ".npy data"), source.readinto, writer,
                          "array", source.name)
        if not source.at_end():
            raise FormatError(f"{source.name}: data continues past the array")
        fmt = {"name": self.name, "fortran_order": member["fortran_order"]}
        if "version" in member:
            fmt["version"] = member["version"]
        return fmt

    def smudge(self, manifest: Manifest, reader: ChunkReader, out: BinaryIO,
               tmp_dir: str | None = None) -> None:
        if list(manifest.params) != ["array"]:
            raise ManifestError("npy manifest must hold exactly one parameter named 'array'")
        _write_npy(out, manifest.params["array"], bool(manifest.format.get("fortran_order")),
                   reader, manifest.format.get("version"))

    def tensors(self, fmt: dict[str, Any], params: dict[str, Any]) -> dict[str, TensorView]:
        return {n: _array_view(n, e, bool(fmt.get("fortran_order"))) for n, e in params.items()}


class NpzFormat(Format):
    """A NumPy ``.npz`` archive (``numpy.savez`` / ``savez_compressed``: a zip of ``.npy``
    members), one parameter per member, named after it without ``.npy``.

    The format info records the members' order, their Fortran order and header versions,
    and whether the archive was deflated; the rebuild writes them again as ``numpy.savez``
    does, so an archive numpy wrote comes back byte-identical.  Clean raises
    FormatError for a member that is not ``.npy`` or a broken archive, and what
    ``NpyFormat`` raises for each member.
    """

    name = "numpy"
    extensions = (".npz",)

    def sniff(self, head: bytes) -> bool:
        if head.startswith(EMPTY_ZIP) and len(head) == 22:  # np.savez() of no arrays
            return True
        member = first_member(head)
        return member is not None and member.endswith(".npy")

    def clean(self, source: Source, writer: ChunkWriter) -> dict[str, Any]:
        members = []
        compressed = False
        with source.as_file() as path:
            try:
                with zipfile.ZipFile(path) as zf:
                    for info in zf.infolist():
                        if not info.filename.endswith(".npy"):
                            raise FormatError(f"{source.name}: member {info.filename!r} is not "
                                              "a .npy array")
                        compressed |= info.compress_type != zipfile.ZIP_STORED
                        where = f"{source.name}:{info.filename}"
                        with zf.open(info) as member:
                            read_exact, readinto = _stream_reader(member, where)
                            rec = _add_npy(read_exact, readinto, writer,
                                           info.filename[:-4], where)
                        members.append(rec)
            except (zipfile.BadZipFile, EOFError) as e:
                raise FormatError(f"{source.name}: broken zip archive ({e})") from None
        return {"name": self.name, "compressed": compressed, "members": members}

    def select(self, fmt: dict[str, Any], names: list[str]) -> dict[str, Any]:
        keep = set(names)
        return {**fmt, "members": [m for m in fmt.get("members", []) if m.get("param") in keep]}

    def tensors(self, fmt: dict[str, Any], params: dict[str, Any]) -> dict[str, TensorView]:
        fortran = {m.get("param"): bool(m.get("fortran_order")) for m in fmt.get("members", [])
                   if isinstance(m, dict)}
        return {n: _array_view(n, e, fortran.get(n, False)) for n, e in params.items()}

    def smudge(self, manifest: Manifest, reader: ChunkReader, out: BinaryIO,
               tmp_dir: str | None = None) -> None:
        fmt = manifest.format
        members = fmt.get("members")
        if not isinstance(members, list) or sorted(m.get("param") for m in members) != sorted(
                manifest.params):
            members = [{"param": n, "fortran_order": False} for n in sorted(manifest.params)]
        compression = zipfile.ZIP_DEFLATED if fmt.get("compressed") else zipfile.ZIP_STORED
        # zipfile writes local headers it patches later, so build the archive on disk.
        scratch = scratch_name(tmp_dir)  # a full disk there says where
        with scratch_file(tmp_dir) as tmp:
            with named(scratch), zipfile.ZipFile(tmp, mode="w", compression=compression,
                                                 allowZip64=True) as zf:
                for m in members:
                    with zf.open(m["param"] + ".npy", "w", force_zip64=True) as fid:
                        _write_npy(fid, manifest.params[m["param"]],
                                   bool(m.get("fortran_order")), reader, m.get("version"))
            with named(scratch):
                tmp.flush()  # what the buffer holds meets the full disk here, not on close
            tmp.seek(0)
            shutil.copyfileobj(tmp, out, 1 << 20)
