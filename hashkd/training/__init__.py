"""Training loops: the CIBHash teacher, the distilled student and their shared machinery."""
