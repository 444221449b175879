"""ctfmsegresnet: an Auto3DSeg algorithm template (SegResNetDS, optionally starting from CT-FM weights)."""
