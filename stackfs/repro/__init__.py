"""Reproducers of the seed bugs: scenarios, the runner, ``stackfs repro`` and ``stackfs demo``.

Modules, one job each:

* :mod:`~stackfs.repro.scenario` — what a scenario is (:class:`Scenario`, :class:`Variant`,
  :class:`Case`, :class:`Proc`, :class:`ServerAction`; outcomes ``deadlock``/``oops``/
  ``completes``; modes ``forced``/``natural``);
* :mod:`~stackfs.repro.registry` — ``@register`` and lookup; scenarios live in
  :mod:`stackfs.repro.scenarios` (one short module each);
* :mod:`~stackfs.repro.context` — :class:`StackContext` (mount layers bottom-up, act as another
  client, run prepare steps, note what was done) and :class:`Run`, the context of one run;
* :mod:`~stackfs.repro.stacks` — the command lines of the layers;
* :mod:`~stackfs.repro.workload` — the real processes;
* :mod:`~stackfs.repro.evidence` — checks on the watchdog's report and on the data;
* :mod:`~stackfs.repro.observe` — a workload under the watchdog until a verdict; recovery
  restricted to the stack's own connections;
* :mod:`~stackfs.repro.runner` — one run: mount, prepare, watch, recover, judge;
* :mod:`~stackfs.repro.outcome` — the outcomes and the one verdict (``judge``) that the runner,
  the explorer, the pytest plugin and the JUnit/KTAP writers share;
* :mod:`~stackfs.repro.stats`, :mod:`~stackfs.repro.present`, :mod:`~stackfs.repro.cli`.

Programmatic use::

    from stackfs.repro import registry, runner
    r = runner.run_with_retries(registry.get("aufs-afs-copyup"), "buggy", "mv")
    assert r.matched and r.observed == "deadlock"
"""
