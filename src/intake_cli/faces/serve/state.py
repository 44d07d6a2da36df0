"""What the serve application holds for its handlers (aiohttp app keys), apart from the
modules that use it so none of them imports another's routes."""

from __future__ import annotations

import logging

from aiohttp import web

from intake_cli.platform.config import Settings
from intake_cli.platform.db import Endpoints

SETTINGS = web.AppKey("settings", Settings)
ENDPOINTS = web.AppKey("endpoints", Endpoints)
LOGGER = web.AppKey("logger", logging.Logger)
