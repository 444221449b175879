"""Code that belongs to CT-FM pretraining only: the losses, the model head, the patch-pair sampler,
the trainer iteration and the checkpoint handlers. Shared code (encoder, preprocessing, weight I/O)
comes from the ``ctfm`` package."""
