"""plastix: loss of plasticity in neural networks, as a functional JAX library."""

import setuptools

setuptools.setup(
    name="plastix",
    version="0.1.0",
    description=("Disentangling the causes of plasticity loss: nonstationary tasks, "
                 "interventions and mechanism probes as one scanned, seed-vmapped JAX program."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["plastix", "plastix.*", "experiments",
                                               "configs"]),
    package_data={"plastix.data.embedded": ["*.npz", "FASHION_MNIST_LICENSE"]},
    install_requires=[
        "jax>=0.4.30,<0.11",
        "flax>=0.10,<0.13",
        "optax>=0.2.3,<0.3",
        "chex>=0.1.87",
        "ml_collections>=0.1.1",
        "absl-py>=1.0",
        "numpy>=1.26",
        "matplotlib>=3.7",
        "tensorflow-datasets>=4.9.6",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3"],
        # The PyTorch reference of benchmarks/throughput.py; the CPU build.
        "bench": ["torch==2.13.0"],
    },
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
