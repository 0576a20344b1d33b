"""Workspaces across a Ray cluster (docs/cluster.md): ``Cluster(address).create(...)``.

Needs the ``ray`` extra (``pip install 'microagent[ray]'``); Ray itself is
imported only when a :class:`Cluster` connects.
"""

from microagent.cluster.client import Cluster, ClusterWorkspace, WorkspaceLost
from microagent.cluster.runtime import start_agent, stop_agent

__all__ = ["Cluster", "ClusterWorkspace", "WorkspaceLost", "start_agent", "stop_agent"]
