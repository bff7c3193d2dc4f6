"""`acm export --upload REPO_ID`: the exported folder to a Hugging Face Hub model repository, with
huggingface_hub (installed with mlx-lm). Only on request: nothing leaves the machine otherwise."""
from __future__ import annotations

from pathlib import Path

from core.errors import AcmError, one_line
from core.escapes import visible


def check_repo_id(repo_id: str) -> None:
    """A Hub repository id (`owner/name`), checked before anything is exported: one the Hub would
    refuse is one line now, not after the export is written."""
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        raise AcmError("--upload needs huggingface_hub: pip install huggingface_hub") from None
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise AcmError(f"{visible(repo_id)!r} is no Hugging Face Hub repository id: "
                       f"{str(e).splitlines()[0].rsplit(':', 1)[0]}") from None


def upload_folder(folder: Path, repo_id: str, private: bool = False, endpoint: str | None = None) -> str:
    """Create the repo if needed and commit the folder to it; the commit's URL."""
    check_repo_id(repo_id)
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message=f"acm export: {folder.name}")
    except Exception as e:  # the Hub's refusal, a missing token, no network: one line, the folder stays
        reason = one_line(e).splitlines()[0]
        raise AcmError(f"upload of {folder} to {repo_id} failed, the exported folder is kept (a token comes from "
                       f"`hf auth login`, or HF_TOKEN): {reason}") from None
    return str(getattr(commit, "commit_url", None) or commit)
