"""Shared pytest fixtures. Keep minimal: each fixture here is used by several test files."""
import numpy as np
import pytest


@pytest.fixture(scope="session")
def smollm2_path():
    """Path of the built-in SmolLM2-135M-Instruct HF folder (awq.zoo), built once and cached under
    $AWQ_CACHE or ~/.cache/awq. Skips when it cannot be fetched (no network and no cache) or the
    zoo's optional packages are missing."""
    zoo = pytest.importorskip("awq.zoo")
    try:
        return zoo.smollm2_135m()
    except zoo.FetchError as e:
        pytest.skip(f"SmolLM2-135M-Instruct is not cached and cannot be fetched: {e}")
    except ImportError as e:
        pytest.skip(f"awq.zoo's optional dependencies are missing: {e}")


@pytest.fixture
def rng():
    """A random generator with a fresh seed, printed so a failure can be replayed."""
    seed = np.random.SeedSequence().entropy
    print(f"seed = {seed}")
    return np.random.default_rng(seed)
