"""Code of the ct_fm_triage bundle only: triage preprocessing, classifier head, datalist checks, reports, run folders.

Shared CT-FM code (weights, encoder, input checks, bootstrap) comes from the installed ``ctfm`` package.
"""
