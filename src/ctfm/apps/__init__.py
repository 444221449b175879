"""Interactive apps over the library (each a small local server; the ``ctfm`` command starts them)."""
