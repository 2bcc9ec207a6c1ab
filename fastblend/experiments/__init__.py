"""The experiment wing: the paper's runs end to end and the ``fastblend`` command line.

Everything here is built on the library (``fastblend`` and its modules outside this package) and
nothing in the library imports it back (``tests/test_layout.py`` holds that):

- :mod:`.settings`: :class:`~.settings.ExperimentConfig`, every setting of a run, checked before work starts;
- :mod:`.pipeline`: :func:`~.pipeline.run_experiment`, one run (train, condense, unlearn, evaluate) per seed;
- :mod:`.results`: the summary table and the files a run writes;
- :mod:`.cache`: the trained-model and index cache a run reuses;
- :mod:`.plots`: the figures a run draws (matplotlib);
- :mod:`.machine`: what a result names the machine by;
- :mod:`.cli`: the ``fastblend`` console script (``python -m fastblend`` runs it too).
"""
