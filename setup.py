"""corea_jax: a JAX/Flax reimplementation of COREA (confidence-calibrated SLM/LLM cascades)."""

from setuptools import find_packages, setup

setup(
    name="corea_jax",
    version="0.1.0",
    description="COREA in JAX: confidence-calibrated small/large LM collaboration, trained with GRPO + RLCC.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["corea_jax", "corea_jax.*"]),
    # the dashboard page, and the reproduction's shipped base models (SFT SLM and LLM, 3 MB)
    package_data={"corea_jax.serving": ["dashboard.html"],
                  "corea_jax.reproduction": ["base_models/manifest.json", "base_models/*/*"]},
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "transformers>=5.0",
        "tokenizers",
        "huggingface_hub",
        "datasets",
        "sentencepiece",
        "absl-py",
        "ml-collections",
        "safetensors",
        "gguf",
        "math-verify",
        "matplotlib",
        "tqdm",
        "openai",  # the OpenAI-compatible HTTP backend of the cascade (vLLM, SGLang, hosted APIs)
        "tensorboardX",
        "numpy",
        "scipy",  # exact binomial tails of the risk-controlled threshold
        "fastapi",  # corea_jax.serving: the OpenAI-compatible server (pydantic comes with it)
        "uvicorn",
        "prometheus_client",  # the server's /metrics
    ],
    extras_require={
        # torch is only the reference implementation in tests; pin the CPU wheel
        # (an unpinned torch pulls a multi-GB CUDA build).
        # langchain-openai: the server's test that LangChain's bind_tools gets a clear 400.
        "dev": ["pytest", "hypothesis", "scikit-learn", "accelerate", "torch==2.13.0",
                "nbclient", "nbformat", "ipykernel", "langchain-openai"],
    },
)
