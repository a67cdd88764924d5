"""Record methods of payload kind 2, one module each (:mod:`neurvol.compress.registry`): a
module placed here registers itself when the registry first loads.

Adding one is this module plus its subsection of ``spec/payload.md``:

1. a class deriving from :class:`~neurvol.compress.registry.RecordMethod` (or
   :class:`~neurvol.compress.registry.GridMethod` if the encoder should search its
   fineness for feature grids; it then becomes a ``CodecSettings.grids`` /
   ``--grid-coding`` choice), decorated with ``@register_method``, declaring ``id`` (the
   next unused), ``name``, ``summary``, ``section`` (its spec subsection), ``params`` (its
   constructor keywords: its config), ``maskable`` and ``min_axes``;
2. ``encode(values, encode_stream) -> (id, body)`` and the classmethod
   ``decode(take, shape, m, name, decode_stream) -> (values, coder, codebook bytes)``:
   read every stream through ``decode_stream`` (so the coders' resource bounds apply)
   and refuse every invalid field with a ``NeurvolFormatError``;
3. the spec subsection, headed ``<section> Method <id>: `<name>` `` (it opens with the
   masking and axis rule; ``tests/test_registry.py`` checks it exists), and the id
   table regenerated with
   ``python -m neurvol.compress --markdown`` (``tests/test_registry.py`` compares them).

Plans name it like the others: ``TensorPlan(name, k=..., step=..., params=(("x", v),))``.
"""
