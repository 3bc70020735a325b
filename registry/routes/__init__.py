"""HTTP routes of the registry API: thin handlers that validate, query and return a Public model."""

from __future__ import annotations

from fastapi import APIRouter

from registry.routes import devices, health, households, incidents

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(households.router)
api_router.include_router(devices.router)
api_router.include_router(incidents.router)

__all__ = ["api_router"]
