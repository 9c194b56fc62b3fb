"""The HTTP side: a small routing layer (:mod:`agi_app.web.api`), JSON/XML
rendering, the site with static files, and the endpoint modules."""

from agi_app.web.api import MAX_BODY, ApiError, ApiRequest, ApiResource, ApiResponse, Router
from agi_app.web.site import STATIC_DIR, build_site

__all__ = [
    "MAX_BODY",
    "STATIC_DIR",
    "ApiError",
    "ApiRequest",
    "ApiResource",
    "ApiResponse",
    "Router",
    "build_site",
]
