"""Code of the ct_fm_segmentation bundle only; shared CT-FM code lives in the ``ctfm`` package.

Configs import this package as ``scripts`` (MONAI adds the bundle root to ``sys.path`` in ``run``;
for other entry points run from the bundle root or set ``PYTHONPATH=<bundle_root>``).
"""
