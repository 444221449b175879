"""Command-line tools of the CT-FM toolkit, installed as ``ctfm_tools``; run them as ``ctfm <command>``."""
