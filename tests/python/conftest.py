"""Shared by the Python suites: where scripts/test.sh put things, and the
Ray cluster every Ray suite shares."""

import logging
import os

import pytest
import torch

# scripts/test.sh installs the package (pip install --target) and sets
# ZCWRAP_REQUIRE_PACKAGE=1: there a missing package is a failure, not a skip.
REQUIRE_PACKAGE = os.environ.get("ZCWRAP_REQUIRE_PACKAGE") == "1"


def import_or_skip(module, reason):
    """`module`, imported; where it is missing, a skip saying `reason`, or,
    under scripts/test.sh (which installs every pinned package), a failure."""
    if REQUIRE_PACKAGE:
        return __import__(module)
    return pytest.importorskip(module, reason=reason)


def import_zcwrap():
    """The zcwrap package, or a skip saying why it is missing."""
    try:
        import zcwrap
    except ImportError as e:
        if REQUIRE_PACKAGE:
            raise
        pytest.skip(f"the zcwrap Python package is not importable ({e}); scripts/test.sh builds it",
                    allow_module_level=True)
    return zcwrap


def mapping_of(address):
    """(path, inode, permissions, file offset of the page) of this process's
    mapping that holds `address` (/proc/self/maps), or None."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                page = (address - start) // 4096 * 4096 + int(fields[2], 16)
                return (fields[5] if len(fields) > 5 else "", int(fields[4]), fields[1], page)
    return None


def file_offset(address):
    """(path, inode, offset in that file) of the byte at `address`."""
    path, inode, _, page = mapping_of(address)
    return path, inode, page + address % 4096


# --- the Ray cluster ----------------------------------------------------------

# The zcwrap command of the torch2 lane's build folder (scripts/test.sh sets
# ZCWRAP_TORCH2_BUILD).
ZCWRAP_BIN = os.path.join(os.environ.get("ZCWRAP_TORCH2_BUILD", ""), "cli/zcwrap")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A store folder of the test's own ($ZCWRAP_STORE; Ray's workers get a
    blob from the object store, not from this folder)."""
    folder = tmp_path / "store"
    monkeypatch.setenv("ZCWRAP_STORE", str(folder))
    return folder


NODES = 3


@pytest.fixture(autouse=True)
def outside_ray_unless_on_the_cluster(request, monkeypatch):
    """Once started, the cluster lives until the session ends. A test that
    does not ask for it sees wrappers behave as outside a Ray job
    (ZCWRAP_RAY_TRANSPORT=0: no blob goes to the object store)."""
    if "cluster" not in request.fixturenames:
        monkeypatch.setenv("ZCWRAP_RAY_TRANSPORT", "0")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A 3-node Ray cluster on this machine, started once for every Ray suite
    (test_ray.py, test_dropin.py). ray.cluster_utils.Cluster gives each node
    its own raylet and object store, one CPU, and a custom resource naming
    it ("node0", ...) so actors and tasks can be pinned."""
    # The suites that ask for it import Ray first (a failure where the
    # package is required).
    ray = import_or_skip("ray", "Ray is not installed (scripts/requirements.txt pins it)")
    from ray.cluster_utils import Cluster

    store = tmp_path_factory.mktemp("store")
    os.environ["ZCWRAP_STORE"] = str(store)
    # Workers import the package (and the suites' helpers) like the driver.
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"node0": 1}, "object_store_memory": 128 << 20})
    for i in range(1, NODES):
        cluster.add_node(num_cpus=1, resources={f"node{i}": 1}, object_store_memory=128 << 20)
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": path, "ZCWRAP_STORE": str(store)}},
             include_dashboard=False, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    # Ray Data leaves a daemon thread polling a Prometheus that is not there;
    # its debug records would hit pytest's closed streams at exit.
    logging.getLogger("ray.data._internal.usage").setLevel(logging.WARNING)


def same_bytes(a, b):
    """Same type, dtype, shape and bytes, through tuples, lists and dicts."""
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same_bytes(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_bytes(a[k], b[k]) for k in a)
    if hasattr(a, "to_tuple"):  # transformers' ModelOutput
        return same_bytes(a.to_tuple(), b.to_tuple())
    if isinstance(a, torch.Tensor) and a.is_quantized:
        if not (isinstance(b, torch.Tensor) and b.is_quantized and a.qscheme() == b.qscheme()):
            return False
        params = ((a.q_scale(), a.q_zero_point()) == (b.q_scale(), b.q_zero_point())
                  if a.qscheme() == torch.per_tensor_affine else
                  same_bytes(a.q_per_channel_scales(), b.q_per_channel_scales())
                  and same_bytes(a.q_per_channel_zero_points(), b.q_per_channel_zero_points()))
        return params and same_bytes(a.int_repr(), b.int_repr())
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and a.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
                == b.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return a == b


def run(model, *args):
    with torch.no_grad():
        return model(*args)
