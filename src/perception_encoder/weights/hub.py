"""Finding checkpoint files on the Hugging Face Hub (or in its local cache).

Two kinds of address:

- a released name: ``facebook/<name>`` holds ``<name>.pt`` (the registry's ``hub_repo`` / ``hub_filename``);
- a checkpoint string ``hf-hub:<repo_id>`` or ``hf-hub:<repo_id>/<filename>`` (optionally
  ``<repo_id>@<revision>``), e.g. ``hf-hub:timm/vit_pe_core_base_patch16_224.fb`` (timm's
  ``model.safetensors``) or ``hf-hub:timm/PE-Core-B-16`` (open_clip's ``open_clip_model.safetensors``).

The cache location and offline mode are read from the environment on every call (``HF_HUB_CACHE``,
``HUGGINGFACE_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE``), so they can change while the process runs.
Offline with nothing cached gives a ``CheckpointError`` that says which file was looked for and how to
provide it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..configs import ModelInfo
from ..errors import CheckpointError

HUB_PREFIX = "hf-hub:"

# Tried in order when an ``hf-hub:`` string names a repository but no file.
_DEFAULT_FILENAMES = (
    "open_clip_model.safetensors",
    "model.safetensors",
    "{repo}.pt",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)

_TRUE = {"1", "on", "yes", "true"}


def is_hub_spec(value: object) -> bool:
    """Whether ``value`` is an ``hf-hub:`` checkpoint string."""
    return isinstance(value, str) and value.startswith(HUB_PREFIX)


def hub_cache_dir() -> str | None:
    """The hub cache folder the environment asks for, or ``None`` for huggingface_hub's default."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expandvars(os.path.expanduser(os.environ[var]))
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expandvars(os.path.expanduser(os.environ["HF_HOME"])), "hub")
    return None


def _cache_shown() -> str:
    """The cache folder for messages: the one the environment names, else huggingface_hub's default."""
    if hub_cache_dir():
        return str(hub_cache_dir())
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether downloads are off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to a true value)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in _TRUE


def parse_hub_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``"hf-hub:org/repo[@rev][/path/to/file]"`` -> ``(repo_id, filename or None, revision or None)``."""
    if not is_hub_spec(spec):
        raise ValueError(
            f"not an hf-hub checkpoint string: {spec!r} (expected 'hf-hub:<org>/<repo>[/<file>]')"
        )
    parts = [p for p in spec[len(HUB_PREFIX) :].strip().split("/") if p]
    if len(parts) < 2:
        raise CheckpointError(f"{spec!r}: expected 'hf-hub:<org>/<repo>' or 'hf-hub:<org>/<repo>/<filename>'")
    repo, revision = parts[1], None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    filename = "/".join(parts[2:]) or None
    return f"{parts[0]}/{repo}", filename, revision


def _hub_errors():
    from huggingface_hub.utils import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    return EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError


def _fetch(repo_id: str, filename: str, revision: str | None) -> Path:
    """``hf_hub_download`` with the cache and offline mode the environment asks for now."""
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(
            repo_id=repo_id,
            filename=filename,
            revision=revision,
            cache_dir=hub_cache_dir(),
            local_files_only=hub_offline(),
        )
    )


def _explain(e: Exception, what: str, repo_id: str, filename: str, revision: str | None) -> CheckpointError:
    """A ``CheckpointError`` that says what went wrong fetching ``filename`` and how to get past it."""
    entry_missing, not_cached, repo_missing, revision_missing = _hub_errors()
    if isinstance(e, not_cached):
        offline = hub_offline()
        where = _cache_shown()
        reason = "downloads are off (HF_HUB_OFFLINE=1)" if offline else "the hub could not be reached"
        fix = "or set HF_HUB_OFFLINE=0 to download it." if offline else "or retry when online."
        return CheckpointError(
            f"{what}: file '{filename}' of hub repo '{repo_id}' is not in the local cache ({where}) and "
            f"{reason}. Provide the file with --checkpoint PATH (checkpoint=PATH in Python), {fix}"
        )
    if isinstance(e, entry_missing):
        return CheckpointError(f"{what}: hub repo '{repo_id}' has no file '{filename}'")
    if isinstance(e, revision_missing):
        return CheckpointError(f"{what}: hub repo '{repo_id}' has no revision '{revision}'")
    if isinstance(e, repo_missing):  # also gated or private repos without a token
        return CheckpointError(
            f"{what}: hub repo '{repo_id}' was not found or needs access (log in with `hf auth login` "
            "for gated repos)"
        )
    return CheckpointError(f"{what}: could not fetch '{filename}' from hub repo '{repo_id}': {e}")


def download(repo_id: str, filename: str, *, revision: str | None = None, what: str | None = None) -> Path:
    """The local path of ``filename`` from hub repo ``repo_id`` (downloaded unless cached or offline).

    ``what`` names the request in error messages (default: the repo and file). Failures raise
    ``CheckpointError``.
    """
    what = what or f"'{filename}' from hub repo '{repo_id}'"
    try:
        return _fetch(repo_id, filename, revision)
    except OSError as e:  # every hub error is an OSError (HTTP, not cached, network, disk)
        raise _explain(e, what, repo_id, filename, revision) from e
    except Exception as e:
        entry_missing = _hub_errors()[0]
        if isinstance(e, entry_missing):
            raise _explain(e, what, repo_id, filename, revision) from e
        raise


def resolve_released(info: ModelInfo) -> Path:
    """The local path of a registered model's released checkpoint (``hub_repo`` / ``hub_filename``)."""
    if not info.hub_repo or not info.hub_filename:
        raise CheckpointError(
            f"{info.name}: no released weights are known for this model; pass checkpoint=PATH "
            "(--checkpoint PATH), or pretrained=False for random weights"
        )
    return download(info.hub_repo, info.hub_filename, what=f"weights of {info.name}")


def resolve_hub_spec(spec: str) -> Path:
    """The local path of the file an ``hf-hub:`` string names.

    Without a filename, the usual names are tried in turn: ``open_clip_model.safetensors``,
    ``model.safetensors``, ``<repo>.pt``, ``open_clip_pytorch_model.bin``, ``pytorch_model.bin``.
    """
    repo_id, filename, revision = parse_hub_spec(spec)
    if filename:
        return download(repo_id, filename, revision=revision, what=spec)
    candidates = [name.format(repo=repo_id.split("/")[1]) for name in _DEFAULT_FILENAMES]
    entry_missing = _hub_errors()[0]
    last: Exception | None = None
    for name in candidates:
        try:
            return _fetch(repo_id, name, revision)
        except Exception as e:
            if not isinstance(e, entry_missing):  # cache misses are entry errors too: try the next name
                if isinstance(e, OSError):
                    raise _explain(e, spec, repo_id, name, revision) from e
                raise
            last = e
    if hub_offline():
        raise CheckpointError(
            f"{spec}: none of {', '.join(candidates)} from hub repo '{repo_id}' is in the local cache "
            f"({_cache_shown()}) and downloads are off "
            "(HF_HUB_OFFLINE=1). Name the file ('hf-hub:<repo>/<filename>'), provide it with "
            "--checkpoint PATH, or set HF_HUB_OFFLINE=0 to download it."
        ) from last
    raise CheckpointError(
        f"{spec}: hub repo '{repo_id}' has none of {', '.join(candidates)} (or the hub could not be "
        "reached); name the file as 'hf-hub:<repo>/<filename>'"
    ) from last
