"""The app layer: one App per app, given its services (see core.py for how a change applies)."""

from pikud.app.app import App
from pikud.app.core import remove_tree
from pikud.app.desired import Desired
from pikud.app.services import AppServices

__all__ = ["App", "AppServices", "Desired", "remove_tree"]
