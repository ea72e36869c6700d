"""One typed settings object for every mlworker process (see README "Configuration")."""

from config.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
