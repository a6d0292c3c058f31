"""The store: a folder of the user's own, links never followed, reused files
checked byte for byte, and gc that removes only what no process uses.

The second-user cases switch a forked child to `nobody` (root only: they
skip, saying so, elsewhere). The child forks after torch and zcwrap are
imported, so it needs no access to the virtual environment under /root.
"""

import fcntl
import json
import os
import pickle
import re
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

from conftest import ZCWRAP_BIN, import_zcwrap

zcwrap = import_zcwrap()

NOBODY = 65534


# Each test packs into its own store folder (conftest.py).
pytestmark = pytest.mark.usefixtures("store")


def model(seed=0, width=64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 8)).eval()


def same_output(a, b):
    x = torch.randn(3, a[0].in_features, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def same_weights(a, b):
    """Every parameter bit-equal; what a forked child checks (a forward pass
    there could wait forever on the OpenMP threads the fork left behind)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def as_nobody(fn):
    """Runs fn() in a child process switched to uid/gid nobody; returns
    ("ok", value) or ("error", exception type name, message). fn must run no
    torch computation (see same_weights)."""
    if os.geteuid() != 0:
        pytest.skip("switching to a second user (nobody) needs root")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            os.chdir("/")
            try:
                result = ("ok", fn())
            except BaseException as e:  # reported to the parent, which asserts on it
                result = ("error", type(e).__name__, str(e))
            os.write(write, pickle.dumps(result))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the child running as nobody failed"
    return pickle.loads(data)


def files_in(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# --- the folder ------------------------------------------------------------------


def test_default_store_is_per_user_and_private(monkeypatch):
    monkeypatch.delenv("ZCWRAP_STORE")
    # Weights no other process has: the default store is shared by all of
    # this user's processes, and gc leaves a blob any of them maps.
    m = model(seed=int.from_bytes(os.urandom(4), "little"))
    wrapper = zcwrap.ModelWrapper.from_model(m)
    folder = os.path.dirname(wrapper.blob_path)
    assert folder == f"/dev/shm/zcwrap-{os.geteuid()}"
    st = os.stat(folder)
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
    assert stat.S_IMODE(os.stat(wrapper.blob_path).st_mode) == 0o600
    assert same_output(wrapper.unwrap(), m)
    if os.geteuid() == 0:
        # Another user gets a folder of its own, even though root's exists, and
        # cannot read root's blob.
        seed = int.from_bytes(os.urandom(4), "little")

        def pack_as_nobody():
            w = zcwrap.ModelWrapper.from_model(model(seed=seed))
            try:
                open(wrapper.blob_path, "rb")
                readable = True
            except PermissionError:
                readable = False
            mode = stat.S_IMODE(os.stat(os.path.dirname(w.blob_path)).st_mode)
            ok = same_weights(w.unwrap(), model(seed=seed))
            del w
            zcwrap.gc()
            return os.path.dirname(wrapper.blob_path), readable, mode, ok
        result = as_nobody(pack_as_nobody)
        assert result[0] == "ok", result
        assert result[1] == (folder, False, 0o700, True)
        own = f"/dev/shm/zcwrap-{NOBODY}"
        assert os.stat(own).st_uid == NOBODY and files_in(own) == []
        os.rmdir(own)
    path = wrapper.blob_path
    del wrapper
    zcwrap.gc()
    assert not os.path.exists(path)


FOLDERS = {
    "another user's, world-writable": (NOBODY, 0o777, "owned by uid 65534, not by you"),
    "mine, writable by others": (0, 0o777, "is writable by others (mode 0777)"),
    "mine, writable by my group": (0, 0o770, "is writable by its group (mode 0770)"),
}


@pytest.mark.parametrize("case", sorted(FOLDERS))
@pytest.mark.parametrize("how", ["store_dir", "ZCWRAP_STORE"])
def test_a_folder_others_can_write_is_refused(tmp_path, monkeypatch, case, how):
    owner, mode, message = FOLDERS[case]
    if owner != 0 and os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chown(folder, owner if owner else os.geteuid(), -1)
    os.chmod(folder, mode)
    kwargs = {"store_dir": str(folder)} if how == "store_dir" else {}
    if how == "ZCWRAP_STORE":
        monkeypatch.setenv("ZCWRAP_STORE", str(folder))
    with pytest.raises(zcwrap.WriteError, match=re.escape(message)) as raised:
        zcwrap.ModelWrapper.from_model(model(), **kwargs)
    assert "\n" not in str(raised.value)
    with pytest.raises(zcwrap.WriteError, match=re.escape(message)):
        zcwrap.gc(**kwargs)
    assert files_in(folder) == []


def test_a_link_as_the_folder_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    os.symlink(real, tmp_path / "link")
    with pytest.raises(zcwrap.WriteError, match="is a symbolic link"):
        zcwrap.ModelWrapper.from_model(model(), store_dir=str(tmp_path / "link"))
    assert files_in(real) == []


@pytest.fixture
def reachable(tmp_path):
    """A folder every user can reach (pytest's own are 0700), removed after."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(dir="/dev/shm", prefix="zcwrap-test-")
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder)


def test_another_users_folder_is_refused_to_them_and_yours_is_closed_to_them(reachable):
    mine = os.path.join(reachable, "mine")
    wrapper = zcwrap.ModelWrapper.from_model(model(), store_dir=mine)
    # The reverse of the first case: root's folder (0755 here) given to nobody.
    os.chmod(mine, 0o755)
    name = os.path.basename(wrapper.blob_path)

    def use_roots_folder():
        outcome = []
        try:
            zcwrap.ModelWrapper.from_model(model(seed=3), store_dir=mine)
        except zcwrap.WriteError as e:
            outcome.append(str(e))
        try:  # plant a link under the blob's name
            os.symlink("/etc/hostname", os.path.join(mine, name + ".x"))
            outcome.append("planted")
        except PermissionError:
            outcome.append("no write")
        return outcome

    result = as_nobody(use_roots_folder)
    assert result[0] == "ok", result
    refused, planted = result[1]
    assert "owned by uid 0, not by you (uid 65534)" in refused and planted == "no write"
    assert files_in(mine) == [name]


# --- what is in the folder --------------------------------------------------------


def test_a_link_planted_under_a_blobs_name_is_replaced_not_followed(tmp_path):
    m = model()
    name = os.path.basename(zcwrap.ModelWrapper.from_model(m, store_dir=str(tmp_path / "first")).blob_path)
    secret = tmp_path / "secret"
    secret.write_bytes(b"root's own file\n")
    os.chmod(secret, 0o600)
    folder = tmp_path / "store2"
    folder.mkdir(mode=0o700)
    os.symlink(secret, folder / name)
    wrapper = zcwrap.ModelWrapper.from_model(m, store_dir=str(folder))
    assert secret.read_bytes() == b"root's own file\n" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not os.path.islink(folder / name) and stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600
    assert same_output(wrapper.unwrap(), m)


def test_a_planted_file_with_other_weights_is_replaced(tmp_path):
    m = model()
    first = zcwrap.ModelWrapper.from_model(m, store_dir=str(tmp_path / "first"))
    good = open(first.blob_path, "rb").read()
    info = zcwrap.describe(first.blob_path)
    # Same header, manifest and skeleton (so the same name and meta checksum),
    # other weights: flip one byte of every tensor.
    planted = bytearray(good)
    for t in info["models"][0]["tensors"]:
        planted[t["offset"]] ^= 0xFF
    folder = tmp_path / "store2"
    folder.mkdir(mode=0o700)
    target = folder / os.path.basename(first.blob_path)
    target.write_bytes(bytes(planted))
    os.chmod(target, 0o600)
    wrapper = zcwrap.ModelWrapper.from_model(m, store_dir=str(folder))
    assert wrapper.blob_path == str(target)
    assert target.read_bytes() == good
    assert same_output(wrapper.unwrap(), m)


def test_a_blob_that_matches_is_reused_as_it_is(store):
    m = model()
    a = zcwrap.ModelWrapper.from_model(m)
    inode = os.stat(a.blob_path).st_ino
    b = zcwrap.ModelWrapper.from_model(m)
    assert b.blob_path == a.blob_path and os.stat(b.blob_path).st_ino == inode


def test_file_mode_is_what_the_user_asks(store):
    w = zcwrap.ModelWrapper.from_model(model(), file_mode=0o640)
    assert stat.S_IMODE(os.stat(w.blob_path).st_mode) == 0o640


# --- gc ------------------------------------------------------------------------


def test_gc_removes_only_what_no_process_holds(store):
    m = model()
    wrapper = zcwrap.ModelWrapper.from_model(m)
    path = wrapper.blob_path
    assert zcwrap.gc() == []  # the wrapper holds it
    unwrapped = wrapper.unwrap()
    del wrapper
    assert zcwrap.gc() == []  # the unwrapped model maps it
    assert same_output(unwrapped, m)
    del unwrapped
    assert zcwrap.gc(dry_run=True) == [{"path": path, "bytes": os.path.getsize(path), "temporary": False}]
    assert os.path.exists(path)
    removed = zcwrap.gc()
    assert [r["path"] for r in removed] == [path] and files_in(store) == []


def test_gc_leaves_other_files_and_removes_planted_links(store, tmp_path):
    wrapper = zcwrap.ModelWrapper.from_model(model())
    name = os.path.basename(wrapper.blob_path)
    del wrapper
    (store / "notes.txt").write_text("mine")
    target = tmp_path / "target"
    target.write_text("keep")
    os.symlink(target, store / ("0" * 16 + ".zcb"))
    removed = sorted(r["path"] for r in zcwrap.gc())
    assert removed == sorted([str(store / name), str(store / ("0" * 16 + ".zcb"))])
    assert files_in(store) == ["notes.txt"] and target.read_text() == "keep"


def test_gc_removes_a_gpu_models_kernel_folder_unless_a_process_holds_it(store):
    # A CUDA AOTInductor model's kernels are placed at unwrap in a folder
    # "<xxh3 of its .so>.kernels" that the worker holds (flock LOCK_SH) while
    # the model lives. Made by hand here, as an unwrap on a GPU leaves it.
    store.mkdir(mode=0o700)
    kernels = store / ("0123456789abcdef" + ".kernels")
    kernels.mkdir(mode=0o700)
    (kernels / "c3x7triton_poi_fused_0.cubin").write_bytes(b"k" * 1000)
    (kernels / "c4y8triton_poi_fused_1.cubin").write_bytes(b"k" * 24)
    (store / "notes.kernels").mkdir()  # not a store name: left alone
    held = os.open(kernels, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_SH)
        assert zcwrap.gc() == []
    finally:
        os.close(held)
    assert zcwrap.gc(dry_run=True) == [{"path": str(kernels), "bytes": 1024, "temporary": False}]
    assert kernels.is_dir()
    assert zcwrap.gc() == [{"path": str(kernels), "bytes": 1024, "temporary": False}]
    assert sorted(os.listdir(store)) == ["notes.kernels"]


def test_gc_removes_a_killed_packs_file_but_not_a_live_one(store):
    wrapper = zcwrap.ModelWrapper.from_model(model())
    name = os.path.basename(wrapper.blob_path)
    del wrapper
    zcwrap.gc()
    dead = store / (name + ".tmp-a1b2c3")
    dead.write_bytes(b"\0" * 4096)
    live = store / (name + ".tmp-d4e5f6")
    live.write_bytes(b"\0" * 4096)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import fcntl, sys
        f = open(sys.argv[1], "rb")
        fcntl.flock(f, fcntl.LOCK_SH)
        print("locked", flush=True)
        sys.stdin.read()
    """), str(live)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        removed = zcwrap.gc()
        assert removed == [{"path": str(dead), "bytes": 4096, "temporary": True}]
        assert files_in(store) == [live.name]
    finally:
        holder.communicate("")
    assert [r["path"] for r in zcwrap.gc()] == [str(live)]


KILLED_PACK = textwrap.dedent("""
    import sys, torch, zcwrap
    from torch import nn
    model = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(4)])  # 256 MiB
    print("packing", flush=True)
    zcwrap.ModelWrapper.from_model(model)
""")


def test_a_pack_killed_while_writing_leaves_a_file_gc_removes(store):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PACK], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "packing"
    deadline = time.time() + 120
    seen = []
    while not seen and proc.poll() is None and time.time() < deadline:
        seen = [n for n in files_in(store) if ".tmp-" in n and os.path.getsize(store / n) > 0]
    proc.kill()
    proc.wait()
    if not seen:
        pytest.skip("the pack finished before it could be killed while writing")
    left = [n for n in files_in(store) if ".tmp-" in n]
    assert left, "the killed pack left no temporary file"
    removed = zcwrap.gc()
    assert {os.path.basename(r["path"]) for r in removed if r["temporary"]} == set(left)
    assert files_in(store) == []


def test_the_cli_gc_removes_what_python_would(store):
    if not os.path.exists(ZCWRAP_BIN):
        pytest.skip(f"no zcwrap binary at {ZCWRAP_BIN} (scripts/test.sh sets ZCWRAP_TORCH2_BUILD)")
    wrapper = zcwrap.ModelWrapper.from_model(model())
    path = wrapper.blob_path
    del wrapper
    dry = subprocess.run([ZCWRAP_BIN, "gc", "--store", str(store), "--dry-run", "--json"], capture_output=True,
                         text=True)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] and [f["path"] for f in report["removed"]] == [path] and os.path.exists(path)
    done = subprocess.run([ZCWRAP_BIN, "gc", "--store", str(store)], capture_output=True, text=True)
    assert done.returncode == 0 and f"removed {path}" in done.stdout, done.stdout + done.stderr
    assert files_in(store) == []
    os.chmod(store, 0o777)
    bad = subprocess.run([ZCWRAP_BIN, "gc", "--store", str(store)], capture_output=True, text=True)
    assert bad.returncode == 6 and bad.stderr.startswith("zcwrap: error: ") and bad.stderr.count("\n") == 1


RACER = textwrap.dedent("""
    import sys, torch, zcwrap
    from torch import nn
    def model(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8)).eval()
    models = [model(seed) for seed in range(3)]
    x = torch.randn(2, 256)
    with torch.no_grad():
        expected = [m(x) for m in models]
    for i in range(int(sys.argv[1])):
        k = i % 3
        wrapper = zcwrap.ModelWrapper.from_model(models[k])          # pack, or reuse
        again = zcwrap.ModelWrapper.from_actor(**wrapper.to_actor())  # open by path, as a worker does
        with torch.no_grad():
            assert torch.equal(again.unwrap()(x), expected[k]), "wrong output"
        del wrapper, again
    print("done", flush=True)
""")


def test_gc_races_four_processes_packing_and_opening_the_same_blobs(store):
    racers = [subprocess.Popen([sys.executable, "-c", RACER, "40"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(4)]
    removed = 0
    while any(r.poll() is None for r in racers):
        removed += len(zcwrap.gc())
    outcomes = [r.communicate() for r in racers]
    for r, (out, err) in zip(racers, outcomes):
        assert r.returncode == 0 and out.strip() == "done", err[-2000:]
        assert "StaleError" not in err
    assert removed > 0, "gc never found an unused blob: the race was not exercised"
    zcwrap.gc()
    assert files_in(store) == []
