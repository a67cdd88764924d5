"""Encode planning: one path for single models and bricked ensembles.

* :mod:`.plan`: settings, header construction and the size solver;
* :mod:`.single`: the one ``fit -> fine-tune -> compress -> pack`` routine, and the
  single-model file;
* :mod:`.pilot`: ``codec={"rate": "auto"}``'s choice of codec from a pilot fit;
* :mod:`.search`: the ``psnr=`` search over ratios;
* :mod:`.bricked`, :mod:`.brick_job`: bricked ensembles, each brick through the single
  routine;
* :mod:`.entry`: :func:`encode_volume`, what ``neurvol.encode`` calls.

Layers: below ``api`` and ``cli``; above ``neural_volume``, ``ensemble``, ``pipeline``,
``fit``, ``models``, ``compress`` and ``container``.
"""
from .entry import encode_volume

__all__ = ["encode_volume"]
