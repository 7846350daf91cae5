"""Train with BasicSR's pipeline and basicsr-kd registered: ``python train.py -opt options/<file>.yml``."""
from basicsr_kd.cli import train

if __name__ == '__main__':
    train()
