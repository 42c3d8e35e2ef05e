"""Tools AI employees may call from `tool` steps. The registry is settings.DESK_TOOLS."""

from desk.tools.base import Tool, ToolContext, ToolRefused, get_tool

__all__ = ["Tool", "ToolContext", "ToolRefused", "get_tool"]
