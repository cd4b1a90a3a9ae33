"""Bearer-token check for writes: with ``LQ_API_TOKEN`` set, writes need the token."""

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

__all__ = ["WriteAccess", "require_write_token"]

_bearer = HTTPBearer(
    auto_error=False,
    description="Needed for writes when the server has LQ_API_TOKEN set; reads are open.",
)


def require_write_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Refuse the request with 401 unless no token is configured or the right one is sent."""
    expected = request.app.state.settings.API_TOKEN
    if not expected:
        return
    sent = credentials.credentials if credentials is not None else ""
    if not secrets.compare_digest(sent.encode(), expected.encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="writes need the header 'Authorization: Bearer <LQ_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


# Put on every route that writes: dependencies=[WriteAccess]
WriteAccess = Depends(require_write_token)
