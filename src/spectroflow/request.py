"""What a run is asked to do, as typed objects: one validated model, from the caller to the workers.

A :class:`RunRequest` is built once (by :func:`spectroflow.make_spectrogram_files`, a flow, or
the command line) and checked by its validators; planning reads it, and each batch of work gets
the :class:`BatchSpec` it needs. Nothing below it checks arguments again.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import annotations as annot_mod
from .audio import AudioFormat
from .params import SpectParams, labelset_to_set
from .storage import Location, absolute, is_local, source_kind


class Folder(BaseModel):
    """Every recording of the audio format under a folder or prefix, searched recursively."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    folder: str = Field(description="Folder or prefix (a local path or a URL).")


class Files(BaseModel):
    """Recordings named one by one; their tree is mirrored below ``root``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    files: list[str] = Field(description="Recordings (local paths or URLs).")
    root: str | None = Field(
        default=None,
        description="Folder whose tree the outputs mirror; default: the files' deepest common "
        "folder. A file outside it fails.",
    )


class AnnotatedFiles(BaseModel):
    """Recordings paired with their annotations: each is an annotation file or a
    ``crowsetta.Annotation``."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    audio_annot_map: dict[str, Any]


Source = Folder | Files | AnnotatedFiles


class BatchSpec(BaseModel):
    """What a batch of work needs beside its work items: small, it travels to every worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    destination: Location
    audio_format: AudioFormat
    spect_params: SpectParams

    def locate(self, url: str) -> Location:
        """A source or output URL of this run, reached with the run's storage options."""
        return self.destination.at(url)


class RunRequest(BaseModel):
    """A run: which recordings, where their outputs go, how they are computed and filtered.

    Examples
    --------
    >>> request = RunRequest(source=Folder(folder="audio"), destination="spect",
    ...                      labelset="range: 1-3")
    >>> sorted(request.labelset), request.spect_params.fft_size
    (['1', '2', '3'], 512)
    >>> RunRequest(source=Files(files=["a.wav"]), destination="out", audio_format="flac")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for RunRequest
      Value error, audio_files do not all end in .flac: ['a.wav'] ...
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    source: Source
    destination: str = Field(description="Folder or prefix for the outputs (source tree mirrored).")
    audio_format: AudioFormat = "wav"
    spect_params: SpectParams = SpectParams()
    annot_format: str | None = Field(default=None, description="crowsetta format of annotations.")
    annotations: str | list[Any] | None = Field(
        default=None,
        description="Annotation files or ``crowsetta.Annotation`` objects, or one file or folder "
        "of them; recordings are matched to them by name.",
    )
    labelset: frozenset[str] | None = Field(
        default=None, description="vak's labelset; recordings with other labels are skipped."
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for every URL of the run."
    )
    skip_done: bool = Field(default=True, description="Leave up-to-date outputs alone.")
    defer_manifest: bool = Field(
        default=False,
        description="Leave the run's rows in the manifest's journal when the manifest is large "
        "(see spectroflow.manifest.DEFER_ABOVE_BYTES), for the next run over the whole source "
        "to merge: a run that an event started then does not rewrite the whole manifest.",
    )

    @field_validator("spect_params", mode="before")
    @classmethod
    def _defaults_for_none(cls, value: Any) -> Any:
        return SpectParams() if value is None else value

    @field_validator("labelset", mode="before")
    @classmethod
    def _vak_labelset(cls, value: Any) -> Any:
        try:
            return None if value is None else labelset_to_set(value)
        except TypeError as exc:  # pydantic reports ValueErrors, naming the field
            raise ValueError(str(exc)) from exc

    @field_validator("annot_format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None:
            annot_mod.suffixes(value)  # raises, naming the formats crowsetta knows
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RunRequest:
        source = self.source
        if isinstance(source, Files):
            wrong = [u for u in source.files if not u.lower().endswith(f".{self.audio_format}")]
            if wrong:
                raise ValueError(f"audio_files do not all end in .{self.audio_format}: {wrong[:5]}")
        if isinstance(source, AnnotatedFiles) and self.annotations is not None:
            raise ValueError("give annot_list or audio_annot_map, not both")
        named = (list(source.audio_annot_map.values()) if isinstance(source, AnnotatedFiles)
                 else [self.annotations] if isinstance(self.annotations, str)
                 else self.annotations or [])
        if self.annot_format is None and any(
            not annot_mod.is_crowsetta_annotation(a) for a in named
        ):
            raise ValueError("annot_format is required to read annotation files")
        return self

    @property
    def output(self) -> Location:
        """The destination, with the run's storage options."""
        return Location(url=self.destination, options=self.storage_options)

    def locate(self, url: str) -> Location:
        """Any URL of this run (a source, an annotation), with the run's storage options."""
        return self.output.at(url)

    def local_paths(self) -> list[str]:
        """The run's folders on this machine's file system (its source and destination, as
        far as they are local): what workers elsewhere must see too."""
        source = self.source
        if isinstance(source, Folder):
            roots = [source.folder]
        else:
            files = source.files if isinstance(source, Files) else list(source.audio_annot_map)
            local = [os.path.dirname(os.path.abspath(f)) for f in files if is_local(f)]
            roots = [os.path.commonpath(local)] if local else []
        return [os.path.abspath(path) for path in [*roots, self.destination] if is_local(path)]

    def anchored(self) -> RunRequest:
        """This request with its local paths made absolute here, on the machine that plans it
        (workers elsewhere, in other working directories, then find the same files), each
        written one way (:func:`~spectroflow.storage.absolute`): every path a run reports, and
        every path column of the manifest, is then absolute or a URL."""
        def annotation(item: Any) -> Any:
            # crowsetta.Annotation objects are anchored as they are read (annotations.from_crowsetta)
            return absolute(os.fspath(item)) if isinstance(item, str | os.PathLike) else item

        source = self.source
        if isinstance(source, Folder):
            source = Folder(folder=absolute(source.folder))
        elif isinstance(source, Files):
            source = Files(files=[absolute(f) for f in source.files],
                           root=None if source.root is None else absolute(source.root))
        else:
            source = AnnotatedFiles(audio_annot_map={
                absolute(url): annotation(value) for url, value in source.audio_annot_map.items()})
        annotations = self.annotations
        if isinstance(annotations, str):
            annotations = absolute(annotations)
        elif annotations is not None:
            annotations = [annotation(item) for item in annotations]
        return self.model_copy(update={"source": source, "annotations": annotations,
                                       "destination": absolute(self.destination)})

    def batch_spec(self) -> BatchSpec:
        return BatchSpec(destination=self.output, audio_format=self.audio_format,
                         spect_params=self.spect_params)

    @classmethod
    def from_vak(cls, audio_format: str, spect_params: SpectParams | dict | None, output_dir: str,
                 *args: Any, skip_done: bool = True, **kwargs: Any) -> RunRequest:
        """The request for the arguments of :func:`spectroflow.make_spectrogram_files` (vak's
        names; after ``output_dir`` in the order of :data:`VAK_ARGUMENTS`), and ``skip_done``."""
        if len(args) > len(VAK_ARGUMENTS):
            raise TypeError(f"at most {3 + len(VAK_ARGUMENTS)} positional arguments, got "
                            f"{3 + len(args)}")
        vak = dict(zip(VAK_ARGUMENTS, args, strict=False))
        unknown = sorted(set(kwargs) - set(VAK_ARGUMENTS))
        repeated = sorted(set(kwargs) & set(vak))
        if unknown or repeated:
            raise TypeError(f"unexpected arguments {unknown}" if unknown
                            else f"arguments given twice: {repeated}")
        vak |= {name: value for name, value in kwargs.items() if value is not None}
        given = [name for name in ("audio_dir", "audio_files", "audio_annot_map")
                 if vak.get(name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of audio_dir, audio_files, audio_annot_map; got {given}")
        source: Source
        if "audio_dir" in given:
            source = Folder(folder=str(vak["audio_dir"]))
        elif "audio_files" in given:
            source = Files(files=[str(f) for f in vak["audio_files"]])
        else:
            source = AnnotatedFiles(
                audio_annot_map={str(k): v for k, v in vak["audio_annot_map"].items()})
        # The validators turn vak's forms (a dict of parameters, a labelset string) into fields.
        return cls.model_validate(dict(
            source=source, destination=str(output_dir), audio_format=audio_format,
            spect_params=spect_params, annot_format=vak.get("annot_format"),
            annotations=vak.get("annot_list"), labelset=vak.get("labelset"),
            storage_options=vak.get("storage_options") or {}, skip_done=skip_done))


#: vak's arguments after ``output_dir``, in the order of
#: :func:`spectroflow.make_spectrogram_files`.
VAK_ARGUMENTS = ("audio_dir", "audio_files", "annot_list", "audio_annot_map", "annot_format",
                 "labelset", "storage_options")


def source_at(source: str | list[str], storage_options: dict | None = None) -> Folder | Files:
    """The source a flow's ``source`` parameter names: a folder or prefix, one file, or a list
    of files. Raises :class:`~spectroflow.storage.StorageError` if a single one does not exist."""
    if isinstance(source, list):
        return Files(files=[str(s) for s in source])
    if source_kind(source, storage_options) == "folder":
        return Folder(folder=source)
    return Files(files=[source])
