"""A deterministic in-memory Raft cluster harness: simulated network, cluster driver,
continuously checked safety invariants and randomized scenarios (see docs/harness.md).

Pure like the rest of ``quorum.raft``: a run is a function of its seed; no clock, OS or threads.
Import the submodules directly (``quorum.raft.harness.cluster``, ...).
"""
