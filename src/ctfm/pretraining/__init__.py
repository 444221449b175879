"""Everything before and after CT-FM pretraining that is not the training loop itself.

- :mod:`ctfm.pretraining.idc`: rebuild the paper's list of about 148,000 IDC CT series (``ctfm idc-manifest``).
- :mod:`ctfm.pretraining.prepare`: filter and cache those scans as int16 HU volumes (``ctfm prepare-pretraining``).
- :mod:`ctfm.pretraining.cache`: read that cache (the pretraining bundle's data pipeline).
- :mod:`ctfm.pretraining.select`: rank pretraining checkpoints by few-shot segmentation (``ctfm select-checkpoint``).
"""
