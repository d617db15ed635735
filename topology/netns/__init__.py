"""Hosts of our own: each step of a pipeline in its own network namespace, and faults on the
links between them.

A :class:`~topology.netns.network.Network` is a bridge in a namespace of its own with one
namespace per host joined to it by a veth pair; addresses come from RFC 2544's benchmarking
range and exist only inside those namespaces, so nothing of the machine's own network is
touched. :mod:`~topology.netns.faults` drops packets on the bridge with nftables (a blackholed
host, a partition, random loss) and caps a host's bandwidth with ``tbf``; this kernel has no
netem, so :mod:`~topology.netns.toxiproxy` adds latency and jitter with Toxiproxy on the links
that need it. :class:`~topology.netns.hosted.HostedPipeline` runs a pipeline's steps on such
hosts; :mod:`~topology.netns.drive` is the load a client host sends, and
:mod:`~topology.netns.figures` reduces what it saw to the figures a scenario prints.

Plans (names, addresses, nftables rule sets, figures) are pure; the rest runs ``ip``, ``nft``
and ``tc`` and needs root. Used by the network-fault tests and ``examples/network_faults.py``;
imports the pipeline model, the local processes' supervisor and stepsvc, and nothing imports it.
"""
