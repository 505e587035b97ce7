"""The ``quorum`` command (click). Entry point: ``quorum.cli.main:main``."""
