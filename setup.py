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
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["plastix", "plastix.*", "experiments",
                                               "configs", "configs.*"]),
    package_data={"plastix.data.embedded": ["*.npz", "FASHION_MNIST_LICENSE"]},
    # Each floor is the version the tests run with (.ci/constraints.txt pins CI to
    # exactly these); the caps are the next releases, not yet tested.
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8",  # plastix.checkpointing imports it directly.
        "chex>=0.1.92",
        "ml_collections>=1.1.0",
        "absl-py>=2.5.1",
        "numpy>=2.4.6",
        "matplotlib>=3.11.2",
        "tensorflow-datasets>=4.9.10",
        "tensorboardX>=2.6.5",  # TensorBoard event files, without TensorFlow.
        "gymnax==1.0.1",
        "six>=1.17",  # gymnax imports it without declaring it.
        "ale-py>=0.12.1,<0.13",
    ],
    extras_require={
        # plastix.results.load returns a pandas DataFrame when pandas is installed.
        "pandas": ["pandas>=3.1.1"],
        "test": ["pytest>=9.0.3", "pytest-xdist>=3.8.0", "pandas>=3.1.1"],
        # The PyTorch reference of benchmarks/throughput.py (the CPU build) and MinAtar's
        # reference environments.
        "bench": ["torch==2.13.0", "minatar==1.0.15"],
    },
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
