"""Put this directory on ParaView's PYTHONPATH where ParaView cannot load Python plugins
under Python >= 3.11 (docs/paraview.md): Debian 12's ParaView 5.11 imports
``inspect.getargspec``, which Python 3.11 removed, in the module that loads every Python
plugin. ParaView uses only ``.args`` of its result, which ``getfullargspec`` provides.

Python imports ``sitecustomize`` once at startup from the first ``sys.path`` entry that
holds one, so this file replaces a system ``sitecustomize`` while the directory is listed
first; it then imports that one too.
"""
import importlib.util
import inspect
import os
import sys

if not hasattr(inspect, "getargspec"):
    inspect.getargspec = inspect.getfullargspec  # type: ignore[attr-defined]

# Run the sitecustomize this one shadows (e.g. the distribution's), if any.
_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    if not _entry or os.path.abspath(_entry) == _here:
        continue
    _path = os.path.join(_entry, "sitecustomize.py")
    if os.path.isfile(_path):
        _spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", _path)
        if _spec is not None and _spec.loader is not None:
            _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        break
