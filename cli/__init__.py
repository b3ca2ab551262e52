"""The ``maskclip`` command line (the console script ``maskclip = cli.main:main``).

``main`` builds the parser from the command groups and holds the one error handler; each group module adds its
subcommands with ``register(subparsers)``:

- ``label``: ``segment``, ``label``, ``demo``;
- ``review``: ``export``, ``import``, ``evaluate``, ``review push`` / ``pull``;
- ``train``: ``train``; ``benchmark``: ``benchmark``; ``dataset``: ``dataset check`` / ``history``.

``options`` defines every option more than one command takes, the models options fill and the choice lists;
``fields`` turns pydantic fields into options (help, shown default, choices read from the field);
``actions`` is the argparse machinery; ``server`` is the local Prefect server a command owns.
Nothing here imports ``main``, and nothing in ``flows``, ``tasks`` or ``maskclip_core`` imports ``cli``.
"""
