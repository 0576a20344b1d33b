"""microagent: AI-agent workspaces in Linux microVMs."""

__version__ = "0.1.0"
