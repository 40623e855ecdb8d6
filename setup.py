from setuptools import find_packages, setup

setup(
    name="tinysaver_det",
    version="0.1.0",
    description="TinySaver for Detectron2: a small saver detector, a learned evaluator head and a "
    "Cascade R-CNN base that runs only on the images the saver gets wrong",
    packages=find_packages(include=["tinysaver_det", "tinysaver_det.*"]),
    python_requires=">=3.9",
    # detectron2 is installed separately (see README): it is not on PyPI.
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "numpy",
        "pycocotools>=2.0.2",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        "matplotlib",
        "tqdm",
        "opencv-python-headless",
        "scipy",
        "numba>=0.61.2",
    ],
)
