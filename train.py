"""Train with BasicSR's pipeline and basicsr-kd registered: ``python train.py -opt options/<file>.yml``."""
from kd_models.cli import train

if __name__ == '__main__':
    train()
