"""Evaluate with BasicSR's pipeline and basicsr-kd registered: ``python test.py -opt options/test/<file>.yml``."""
from basicsr_kd.cli import test

if __name__ == '__main__':
    test()
