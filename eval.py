"""Evaluate a checkpoint on the test split: ``python eval.py ckpt_path=...``."""

from xray3d.pipeline.evaluate import main

if __name__ == "__main__":
    main()
