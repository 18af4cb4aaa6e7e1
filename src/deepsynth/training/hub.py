"""Optional push of a trained model directory to the Hugging Face Hub (off by default).

A failed push never loses the run: the model stays on disk and the error, naming the repository, is returned
for the trainer to log and record in ``result.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def push_model_dir(
    local_dir: str | Path, repo_id: str, *, private: bool = True, revision: str | None = None
) -> str:
    """Upload ``local_dir`` to ``repo_id`` (created if missing); returns the commit URL.

    Raises RuntimeError naming the repository when the Hub cannot be reached (offline mode, no token, network).
    """
    from huggingface_hub import HfApi

    local = Path(local_dir)
    if not local.is_dir():
        raise FileNotFoundError(f"push to hub: model directory {local} does not exist")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(local),
            repo_id=repo_id,
            revision=revision,
            commit_message=f"DeepSynth: upload {local.name}",
        )
    except Exception as exc:  # offline mode, auth, network: all become one clear error
        raise RuntimeError(
            f"push to hub {repo_id!r} failed ({type(exc).__name__}: {exc}); the model is still at {local}"
        ) from exc
    url = str(getattr(info, "commit_url", info))
    log.info("pushed %s to %s", local, url)
    return url
