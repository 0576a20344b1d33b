"""Egress policy for guests with no NIC: an allowlist proxy on the host (docs/egress.md).

Guest processes reach the proxy on their own loopback (127.0.0.1:3128); guest
init carries each connection over the channel as an ``accept`` session to the
workspace's helper, where :mod:`microagent.egress.proxy` decides, dials and
audits.  :mod:`~microagent.egress.policy` is the allowlist (pure),
:mod:`~microagent.egress.audit` the JSONL decision log,
:mod:`~microagent.egress.sni` the TLS ClientHello reader and
:mod:`~microagent.egress.helper` the helper's accept pool.
"""
