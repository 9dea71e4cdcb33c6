"""Training loops: the CIBHash teacher, the distilled student and their shared machinery."""

#: self-supervised pretraining methods of ``hashkd pretrain`` (kept here, import-light, for the CLI)
PRETRAIN_METHODS = ("simclr", "mocov3")
