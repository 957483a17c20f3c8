"""A directory on any pyarrow filesystem: a local path, or a URI such as s3://bucket/acts or gs://bucket/acts.

Capture writes its shards, images and markers through a `Location`, so Ray workers on other machines can
write straight to object storage. Writes are atomic everywhere: on an object store (s3, gcs, abfs) one PUT
makes the object appear whole or not at all; elsewhere (local disk, hdfs) a temporary name is renamed.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pyarrow.fs as pafs

from atlas.errors import BadInputError, NotFoundError
from atlas.files import atomic_write

OBJECT_STORES = ("s3", "gcs", "abfs")


def is_uri(where: str | Path) -> bool:
    return "://" in str(where)


class Location:
    """Files under one root, addressed by '/'-separated names relative to it. Picklable (only the URI travels)."""

    def __init__(self, where: str | Path) -> None:
        self.uri = str(where) if is_uri(where) else str(Path(where).expanduser().resolve())

    def __getstate__(self) -> dict:
        return {"uri": self.uri}

    def __setstate__(self, state: dict) -> None:
        self.uri = state["uri"]

    def __str__(self) -> str:
        return self.uri

    @cached_property
    def _fs(self) -> tuple[pafs.FileSystem, str]:
        if not is_uri(self.uri):
            return pafs.LocalFileSystem(), self.uri
        try:
            return pafs.FileSystem.from_uri(self.uri)
        except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise BadInputError(f"cannot open {self.uri}: {err}; use a local path or a URI pyarrow knows "
                                "(s3://, gs://, hdfs://, file://)") from None

    @property
    def local(self) -> Path | None:
        """The directory as a local path, or None on a remote filesystem."""
        fs, root = self._fs
        return Path(root) if isinstance(fs, pafs.LocalFileSystem) else None

    def name(self, *parts: str) -> str:
        """The full path or URI of a file (what is stored when a catalog points at it)."""
        local = self.local
        return str(local.joinpath(*parts)) if local else "/".join([self.uri.rstrip("/"), *parts])

    def _path(self, name: str) -> str:
        return f"{self._fs[1].rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        fs, _ = self._fs
        return fs.get_file_info(self._path(name)).type == pafs.FileType.File

    def read(self, name: str) -> bytes:
        fs, _ = self._fs
        try:
            with fs.open_input_stream(self._path(name)) as stream:
                return stream.readall()
        except FileNotFoundError:
            raise NotFoundError(f"missing file {self.name(name)}: the directory is incomplete; re-run the step that "
                                "wrote it") from None

    def write(self, name: str, data: bytes) -> None:
        """Write `data` atomically (readers and resumed runs never see a partial file)."""
        local = self.local
        if local is not None:
            path = local / name
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: tmp.write_bytes(data))
            return
        fs, path = self._fs[0], self._path(name)
        target = path if fs.type_name in OBJECT_STORES else path + ".tmp"
        if target != path:
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(target) as stream:
            stream.write(data)
        if target != path:
            fs.move(target, path)

    def files(self, directory: str, suffix: str) -> list[str]:
        """Base names of the files in `directory` ending with `suffix` (none when it does not exist)."""
        fs, _ = self._fs
        infos = fs.get_file_info(pafs.FileSelector(self._path(directory), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))
