"""The facts stage: what this machine and the target interpreter offer (GPUs, driver, the GPU stack),
probed at the edges or built from the tables for what-if plans."""
