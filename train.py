"""Train a biplanar reconstruction model: ``python train.py [model=...] [data=...] [-m ...]``."""

from xray3d.pipeline.train import main

if __name__ == "__main__":
    main()
