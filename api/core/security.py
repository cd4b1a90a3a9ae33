"""Bearer tokens: with ``LQ_API_TOKEN`` set, writes need it; with ``LQ_API_READ_TOKEN``
set, every ``/api/v1`` request needs one of the two (runs are private). ``/health`` and
the OpenAPI pages stay open. A refusal names the header to send, never a token."""

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

__all__ = ["ReadAccess", "WriteAccess", "require_read_token", "require_write_token"]

_bearer = HTTPBearer(
    auto_error=False,
    description="Needed for writes when the server has LQ_API_TOKEN set, and for reads "
    "(LQ_API_READ_TOKEN or LQ_API_TOKEN) when it has LQ_API_READ_TOKEN set.",
)


def _sent(credentials: HTTPAuthorizationCredentials | None) -> bytes:
    return (credentials.credentials if credentials is not None else "").encode()


def _refuse(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


def require_read_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse with 401 when a read token is configured and neither token is sent."""
    settings = request.app.state.settings
    if not settings.API_READ_TOKEN:
        return
    sent = _sent(credentials)
    tokens = [t for t in (settings.API_READ_TOKEN, settings.API_TOKEN) if t]
    # compare with every token, so the time taken does not say which one was near
    matches = [secrets.compare_digest(sent, token.encode()) for token in tokens]
    if not any(matches):
        raise _refuse("this store is private: send 'Authorization: Bearer <LQ_API_READ_TOKEN>'")


def require_write_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse the request with 401 unless no token is configured or the right one is sent."""
    expected = request.app.state.settings.API_TOKEN
    if not expected:
        return
    if not secrets.compare_digest(_sent(credentials), expected.encode()):
        raise _refuse("writes need the header 'Authorization: Bearer <LQ_API_TOKEN>'")


# On the /api/v1 router: dependencies=[ReadAccess]; on every route that writes: WriteAccess
ReadAccess = Depends(require_read_token)
WriteAccess = Depends(require_write_token)
