"""`acm export --upload REPO_ID`: the exported folder to a Hugging Face Hub model repository, with
huggingface_hub (installed with mlx-lm). Only on request: nothing leaves the machine otherwise."""
from __future__ import annotations

from pathlib import Path

from core.errors import AcmError, one_line


def upload_folder(folder: Path, repo_id: str, private: bool = False, endpoint: str | None = None) -> str:
    """Create the repo if needed and commit the folder to it; the commit's URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise AcmError("--upload needs huggingface_hub: pip install huggingface_hub") from None
    api = HfApi(endpoint=endpoint)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message=f"acm export: {folder.name}")
    except Exception as e:  # the Hub's refusal, a missing token, no network: one line, the folder stays
        reason = one_line(e).splitlines()[0]
        raise AcmError(f"upload of {folder} to {repo_id} failed, the exported folder is kept (a token comes from "
                       f"`huggingface-cli login` or HF_TOKEN): {reason}") from None
    return str(getattr(commit, "commit_url", None) or commit)
