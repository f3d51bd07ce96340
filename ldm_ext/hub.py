"""Upload an export folder to the Hugging Face Hub (``python -m ldm_ext.export ...
--push-to-hub USER/REPO``) through ``huggingface_hub``: ``HfApi.create_repo`` (kept if it
exists) then ``upload_folder``. No token, no network, offline mode or a refusal by the Hub
is a user error in one line; the local export stays as written.
"""
from __future__ import annotations

from pathlib import Path

from ldm_ext.cli import UserError, one_line


class HubError(UserError, OSError):
    """The Hub could not be reached or refused the upload; names the repo and the folder."""


def upload(folder: str | Path, repo_id: str, api=None) -> str:
    """Create the model repo ``repo_id`` if needed and upload ``folder`` into it; returns
    the commit URL. ``api``: an ``HfApi`` (default: one with the login's token)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError  # the HTTP client's base error

    try:
        api = api or HfApi()
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                   commit_message="Upload an idforge export")
    except (OSError, HTTPError) as err:
        reason = one_line(str(err)) or type(err).__name__
        raise HubError(f"could not upload to the Hub repo {repo_id} ({type(err).__name__}: "
                       f"{reason}); the export is kept in {folder}: log in (`hf auth login` "
                       f"or HF_TOKEN) and run `hf upload {repo_id} {folder}`") from None
    return str(getattr(commit, "commit_url", commit))
