"""The built-in `agent_toolset_20260401` tools, executed through a session's sandbox."""

from core.tools.base import ToolOutcome
from core.tools.run import run_tool
from core.tools.specs import BUILTIN_TOOLS, READ_ONLY_TOOLS, TOOLSET, ToolSpec, enabled_tools

__all__ = ["BUILTIN_TOOLS", "READ_ONLY_TOOLS", "TOOLSET", "ToolOutcome", "ToolSpec", "enabled_tools", "run_tool"]
