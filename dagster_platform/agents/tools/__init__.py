"""The typed tools the agents call, one module per agent the router routes to: `infra`
(utilisation, hosts, the ontology), `data` (Spark jobs, kill proposals) and `guide` (the
knowledge base); `base` holds what they share.

Each agent's module declares its tools, argument model beside function, and its `AGENT`, the
route with those tools in order. A new tool is one file: write it in its agent's module and add
it to that module's `AGENT`. The agents are listed here rather than discovered: the list fixes
the order tools are registered and shown in, and a module that fails to import fails here, by
name, instead of its agent going quietly missing. A new agent is its module plus one line.
"""

from dagster_platform.agents.tools import data, guide, infra
from dagster_platform.agents.tools.base import (
    Agent,
    Context,
    Findings,
    Tool,
    ToolContext,
    ToolFailure,
    ToolResult,
)
from dagster_platform.agents.tools.infra import NO_UTILISATION

AGENTS: tuple[Agent, ...] = (infra.AGENT, data.AGENT, guide.AGENT)
AGENT_TOOLS: dict[str, tuple[str, ...]] = {
    agent.route: tuple(tool.name for tool in agent.tools) for agent in AGENTS
}
TOOLS: dict[str, Tool] = {tool.name: tool for agent in AGENTS for tool in agent.tools}

__all__ = [
    "AGENTS",
    "AGENT_TOOLS",
    "NO_UTILISATION",
    "TOOLS",
    "Agent",
    "Context",
    "Findings",
    "Tool",
    "ToolContext",
    "ToolFailure",
    "ToolResult",
]
