"""basicsr-kd: knowledge distillation for image restoration and super-resolution, as a BasicSR plugin."""
from setuptools import setup

setup(
    name='basicsr-kd',
    version='0.1.0',
    description='Knowledge distillation for image restoration and super-resolution as a BasicSR plugin',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=['basicsr_kd', 'kd_archs', 'kd_losses', 'kd_models', 'datasets_prep', 'benchmarks'],
    package_data={'kd_archs': ['kd_presets.yml'], 'basicsr_kd': ['teachers.yml']},
    install_requires=[
        'torch', 'torchvision', 'basicsr==1.4.2', 'numpy', 'opencv-python', 'lmdb', 'pyyaml', 'scikit-image', 'scipy',
        'tqdm', 'Pillow'
    ],
    extras_require={'test': ['pytest', 'pytest-xdist', 'PyWavelets', 'piq'], 'demo': ['matplotlib']},
    entry_points={'console_scripts': ['kd-train = basicsr_kd.cli:train', 'kd-test = basicsr_kd.cli:test']},
)
