"""The routed agents: a router, three tool-using agents, sessions and the interactions log."""
