"""Errors a user can act on. The CLI prints them as one line and exits with status 2 (1 for JobFailedError)."""


class HubbeamError(Exception):
    """Base class: the message alone must tell the user what went wrong and what to do."""


class HandleError(HubbeamError):
    """The handle is malformed, uses an unsupported scheme, or names nothing that exists locally."""


class StorageError(HubbeamError):
    """A file or object store could not be read, listed or written (missing object, denied, unreachable)."""


class FetchError(StorageError):
    """A remote module could not be fetched (unreachable host, 404, missing bucket or object, cut-off body)."""


class IntegrityError(HubbeamError):
    """Content failed verification: digest mismatch or an archive that would write outside its folder."""


class ModuleFormatError(HubbeamError):
    """The folder is not a usable module, or the requested signature/output does not exist."""


class JobFailedError(HubbeamError):
    """The Beam job itself failed on its runner (workers lost, a step raised there): not bad input, so the CLI
    exits with status 1. The output folder is left without _SUCCESS; a re-run replaces it."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """A library's exception as one short line: its messages can run to pages (TF prints whole graphs)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
