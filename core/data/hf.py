"""Opening a Hugging Face dataset (a hub name, a local folder, or a builder such as "parquet"), with
the library's many failure types turned into one line each. Both corpora's Hugging Face sources open
datasets here."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from core.errors import AcmError

# httpx's and huggingface_hub's words for "no network" (named, so neither is imported before it is needed)
UNREACHABLE = {"TransportError", "OfflineModeIsEnabled"}


def load_hf(path: str, shown: str, offline_hint: str, **kwargs):
    """`datasets.load_dataset(path, **kwargs)`; `shown` names the dataset in errors, `offline_hint`
    says what to do without a network."""
    import datasets

    datasets.disable_progress_bars()  # our own progress shows documents; tqdm would garble the TUI
    for library, asked in (("datasets", "DATASETS_VERBOSITY"), ("huggingface_hub", "HF_HUB_VERBOSITY")):
        if not os.environ.get(asked):  # their retries' chatter (a line a try without a network) unless asked for:
            logging.getLogger(library).setLevel(logging.CRITICAL)  # what failed is said in one line
    try:
        return datasets.load_dataset(path, **kwargs)
    except FileNotFoundError as e:
        raise AcmError(f"dataset {shown!r} not found ({first_line(e)})") from None
    except ValueError as e:
        raise AcmError(f"dataset {shown!r}: {first_line(e)}") from None
    except Exception as e:  # datasets raises many hub-specific types
        if isinstance(e, (ConnectionError, OSError)) or any(c.__name__ in UNREACHABLE for c in type(e).__mro__):
            raise AcmError(f"could not reach the Hugging Face hub for {shown!r} ({first_line(e)}); "
                           f"offline? {offline_hint}") from None
        raise AcmError(f"could not load dataset {shown!r}: {named(e)}") from None


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def named(e: BaseException) -> str:
    """The error and, where `datasets` wrapped another (its DatasetGenerationError says only that
    "an error occurred"), the one underneath, which says what: a JSON line that does not parse."""
    said = f"{type(e).__name__}: {first_line(e)}"
    cause = _under(e)
    for _ in range(8):  # a chain is short; a loop of causes is not followed for ever
        if cause is None or _under(cause) is None:
            break
        cause = _under(cause)
    return f"{said} ({type(cause).__name__}: {first_line(cause)})" if cause is not None else said


def _under(e: BaseException) -> BaseException | None:
    """The error `e` was raised from, or met while handled (unless it was raised `from None`)."""
    return e.__cause__ or (None if e.__suppress_context__ else e.__context__)


def rows_read(rows, failed) -> Iterator:
    """The dataset's rows; one that fails on the way (a lost network, a damaged file in a local folder)
    is one line, `failed(rows_read_so_far, error_named)`."""
    n = 0
    try:
        for row in rows:
            yield row
            n += 1
    except (AcmError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise AcmError(failed(n, named(e))) from None
