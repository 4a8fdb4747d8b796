import pytest

from rlhf_assets_tests.serving.service_support import make_store, start_server


@pytest.fixture(scope="module")
def serve_store(tmp_path_factory):
    """Two tiny reward models and a calibration of the first; production → the first (release r20250601-2359)."""
    store = make_store(tmp_path_factory.mktemp("serve"))
    store.promote("r20250601-2359", store.rm[0], store.calibration)
    return store


@pytest.fixture(scope="module")
def server(serve_store):
    """One service for the read-only tests (small body limit and client batch, to test them cheaply)."""
    s = start_server(serve_store, "--max-body-bytes", "65536", "--max-client-batch", "8")
    yield s
    s.terminate()


@pytest.fixture
def fresh_store(tmp_path):
    """A store of its own, for tests that move the registry's aliases."""
    store = make_store(tmp_path / "root")
    store.promote("r20250601-2359", store.rm[0], store.calibration)
    return store
