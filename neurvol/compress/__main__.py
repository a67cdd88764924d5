"""``python -m neurvol.compress [--markdown]``: list the registered record methods and
stream coders (``--markdown``: the generated id table of ``spec/payload.md`` §2.4)."""
from .registry import main

raise SystemExit(main())
