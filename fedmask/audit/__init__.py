"""Membership-inference audits of trained adapters (``fedmask audit``).

:mod:`fedmask.audit.stats` holds the statistics (no ML stack); :mod:`fedmask.audit.experiment`
trains the target and shadow models on random halves of a record pool and scores them.
"""
