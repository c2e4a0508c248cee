"""Where a checkpoint named by the user lives: a local directory, or a hub id resolved as
`transformers` resolves it.

A hub id (`org/name`, optionally `org/name@revision`) goes through `huggingface_hub`: the local
cache first (`HF_HUB_CACHE`, `HF_HOME`), a download only where the machine is online and
`HF_HUB_OFFLINE` is not set, and one clear line when neither finds it. Everything that takes a
checkpoint (`load`, `--vlm`, `doctor`, a recipe's `pretrained`/`vlm`/`sam.path`) resolves it here.
"""

from __future__ import annotations

import re
from pathlib import Path

# The files a checkpoint is made of; pickled weights (`*.bin`) and remote code (`*.py`) are not
# fetched: visionloom loads safetensors only and runs no code from a checkpoint.
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]

# `org/name` or `org/name@revision`; huggingface_hub validates the name itself.
HUB_ID = re.compile(r"^(?P<repo>[\w.\-]+/[\w.\-]+)(?:@(?P<revision>[\w.\-/]+))?$")


class CheckpointNotFound(FileNotFoundError):
    """A checkpoint that is neither a local directory nor in reach as a hub id."""


def split_hub_id(name: str) -> tuple[str, str | None] | None:
    """(`org/name`, revision or None) when `name` has the form of a hub id, else None."""
    if name.startswith((".", "/", "~")):
        return None
    match = HUB_ID.match(name)
    if not match:
        return None
    return match["repo"], match["revision"]


def checkpoint_path(name: str | Path, *, revision: str | None = None, setting: str | None = None) -> Path:
    """The local directory of a checkpoint given as a directory or a hub id.

    Args:
        name: a local checkpoint directory, or a hub id `org/name` (`org/name@revision` also
            works) found in the Hugging Face cache or, online, downloaded into it.
        revision: a branch, tag or commit of the hub id (default: `main`, through `refs/main`).
        setting: the setting the name came from (e.g. `vlm`), named in the error.

    Returns:
        The directory holding `config.json` and the weights (for a hub id, its cache snapshot).

    Raises:
        CheckpointNotFound: neither a directory nor a hub id in reach; the message names the id,
            the cache folder and what to run.
    """
    text = str(name)
    where = f"{setting}: " if setting else ""
    directory = Path(text).expanduser()
    if directory.is_dir():
        return directory
    parsed = split_hub_id(text)
    if parsed is None:
        relative = "" if directory.is_absolute() else f" (relative to {Path.cwd()})"
        raise CheckpointNotFound(
            f"{where}{text}{relative} is neither a local checkpoint directory nor a hub id (org/name)"
        )
    repo_id, named_revision = parsed
    if revision and named_revision and revision != named_revision:
        raise CheckpointNotFound(
            f"{where}{text} names revision {named_revision!r} but {revision!r} was asked for"
        )
    # `checkpoints/llava` has the form of a hub id too: a miss names both readings.
    local = (
        "" if named_revision else f"no local directory {text} (relative to {Path.cwd()}) and, as a hub id, "
    )
    return _snapshot(repo_id, revision or named_revision, f"{where}{text}: {local}")


def _snapshot(repo_id: str, revision: str | None, missing: str) -> Path:
    """The cached snapshot of a hub repository, downloaded first where that is allowed."""
    # Imported here: most commands never resolve a hub id, and start-up stays fast.
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id, revision=revision, local_files_only=True, allow_patterns=CHECKPOINT_FILES
            )
        )
    except HFValidationError as error:
        raise CheckpointNotFound(f"{missing}not a valid hub id ({error})") from None
    except LocalEntryNotFoundError:
        pass
    cache = constants.HF_HUB_CACHE
    folder = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    if constants.HF_HUB_OFFLINE:
        raise CheckpointNotFound(
            f"{missing}not in the Hugging Face cache ({folder} is missing or has no snapshot for "
            f"{revision or 'main'}) and HF_HUB_OFFLINE=1 allows no download; run `{fetch}` where the "
            f"network is reachable, or give the path of a local checkpoint directory"
        )
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_FILES))
    except (HfHubHTTPError, OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointNotFound(
            f"{missing}not in the Hugging Face cache ({cache}) and the download failed "
            f"({first_line}); run `{fetch}`, or give the path of a local checkpoint directory"
        ) from None
