"""Stream coders, one module each (:mod:`neurvol.compress.registry`): a module placed here
registers itself when the registry first loads."""
