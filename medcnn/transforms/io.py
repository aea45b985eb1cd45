"""Image loading that fails with a clear, file-named :class:`InvalidInputError` instead of a reader trace.

MONAI's ``LoadImage`` surfaces a truncated or non-image file as whatever the backend raises (nibabel's
``ImageFileError``, a gzip ``BadGzipFile``, ITK's ``RuntimeError`` ...), wrapped in a long transform trace.
These are drop-in replacements for ``LoadImage`` / ``LoadImaged`` with identical arguments and outputs that
re-raise any reader failure as ``InvalidInputError("<file>: cannot read image (<reason>)")``.
"""

from __future__ import annotations

import inspect

from monai.transforms import LoadImage, LoadImaged

from medcnn.transforms.validation import InvalidInputError

__all__ = ["LoadImageChecked", "LoadImageCheckedd"]


def _describe(filename) -> str:
    if isinstance(filename, (list, tuple)):
        return ", ".join(str(f) for f in filename)
    return str(filename)


class LoadImageChecked(LoadImage):
    """``monai.transforms.LoadImage`` that raises ``InvalidInputError`` naming the file it could not read."""

    def __call__(self, filename, reader=None):
        try:
            return super().__call__(filename, reader)
        except InvalidInputError:
            raise
        except Exception as exc:  # any reader / decompression / missing-file error
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise InvalidInputError(f"{_describe(filename)}: cannot read image ({reason})") from exc


#: arguments of ``LoadImaged`` that it hands on to its ``LoadImage`` (MONAI's signature; see the class below)
_LOAD_IMAGE_ARGS = ("reader", "image_only", "dtype", "ensure_channel_first", "simple_keys", "prune_meta_pattern",
                    "prune_meta_sep", "expanduser")


class LoadImageCheckedd(LoadImaged):
    """Dictionary version of :class:`LoadImageChecked` (same arguments as ``monai.transforms.LoadImaged``).

    MONAI loads every key with its own ``LoadImage``; when that fails, each key's file is read again with a
    :class:`LoadImageChecked` of the same arguments, so the error names the file that cannot be read.
    """

    def __init__(self, keys, *args, **kwargs) -> None:
        super().__init__(keys, *args, **kwargs)
        bound = inspect.signature(LoadImaged.__init__).bind(self, keys, *args, **kwargs)
        bound.apply_defaults()
        given = bound.arguments
        self.checked_loader = LoadImageChecked(*given.get("args", ()), **{k: given[k] for k in _LOAD_IMAGE_ARGS},
                                               **given.get("kwargs", {}))

    def __call__(self, data, reader=None):
        try:
            return super().__call__(data, reader)
        except InvalidInputError:
            raise
        except Exception:
            d = dict(data)
            for key in self.key_iterator(d):
                self.checked_loader(d[key], reader)  # raises InvalidInputError naming the unreadable file
            raise  # every file reads on its own: not a reader failure
