"""The reproducers. Each module registers one scenario (or a few closely related ones) with
:func:`stackfs.repro.registry.register`; :func:`stackfs.repro.registry.load` imports them all."""
