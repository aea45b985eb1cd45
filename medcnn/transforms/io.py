"""Image loading that fails with a clear, file-named :class:`InvalidInputError` instead of a reader trace.

MONAI's ``LoadImage`` surfaces a truncated or non-image file as whatever the backend raises (nibabel's
``ImageFileError``, a gzip ``BadGzipFile``, ITK's ``RuntimeError`` ...), wrapped in a long transform trace.
These are drop-in replacements for ``LoadImage`` / ``LoadImaged`` with identical arguments and outputs that
re-raise any reader failure as ``InvalidInputError("<file>: cannot read image (<reason>)")``.
"""

from __future__ import annotations

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


class LoadImageCheckedd(LoadImaged):
    """Dictionary version of :class:`LoadImageChecked` (same arguments as ``monai.transforms.LoadImaged``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # LoadImaged delegates every file to its array loader; give it the checked behaviour, same state.
        self._loader.__class__ = LoadImageChecked
