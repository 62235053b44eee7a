"""Urza, Tezzeret's publish/load path and the kernel cache, through the real library and real files.

No mocks: every artifact is written to a store under tmp_path by Go, and every corruption is done
to the files on disk.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from hosts import HOSTS, PAIRS
from safetensors.torch import save as save_safetensors

from esper import karn
from esper.errors import BudgetError, CancelledError, CorruptError, EsperError, InvalidArgumentError, NotFoundError
from esper.kernels import KernelCache
from esper.tezzeret import SeedModule, SeedValidationError, build_seed, save_weights
from esper.urza import Urza, example_input, load_seed, publish_seed, seed_manifest


def make_seed(template: str = "residual_mlp", host: str = "linear", *, trained: bool = True, seed: int = 0,
              **params: Any) -> SeedModule:
    """A seed of a template; trained=True sets every weight to non-zero values (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        s = build_seed(karn.instantiate(template, HOSTS[host], **params))
    if trained:
        with torch.no_grad():
            for p in s.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return s


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa
    )


def object_path(store: Urza, artifact_id: str, ext: str) -> Path:
    return Path(store.root) / "objects" / artifact_id[:2] / f"{artifact_id}{ext}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Urza]:
    with Urza(tmp_path / "urza") as s:
        yield s


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "host"), PAIRS)
def test_every_template_round_trips_bit_exactly(store: Urza, template: str, host: str) -> None:
    fresh = make_seed(template, host, trained=False)
    x, expected = example_input(fresh.ir["host"])
    assert torch.count_nonzero(fresh(x)) == 0  # zero at germination
    seed = make_seed(template, host)  # all weights non-zero: the round trip must carry every one
    manifest = seed_manifest(seed, tags=["test", host], lineage={"run": "pytest"})
    weights = save_weights(seed)
    aid = store.put(manifest, weights)
    assert publish_seed(store, seed, tags=[host, "test"], lineage={"run": "pytest"}) == aid  # idempotent

    raw_manifest, raw_weights = store.get_bytes(aid)
    assert hashlib.sha256(raw_manifest).hexdigest() == aid
    assert raw_weights == weights
    got, _ = store.get(aid)
    canonical_ir, bid = karn.canonical(seed.ir)
    assert got == {**manifest, "blueprint": json.loads(canonical_ir), "blueprint_id": bid,
                   "weights_sha256": hashlib.sha256(weights).hexdigest(), "weights_size": len(weights)}
    assert got["validation"]["at_init"] is False and got["validation"]["ok"] is True
    assert got["param_count"] == seed.param_count == seed.ir["param_count"]

    loaded = load_seed(store, aid)
    assert isinstance(loaded, SeedModule) and loaded is not seed
    assert same_weights(loaded, seed)
    assert loaded.blueprint_id == bid
    assert list(loaded(x).shape) == expected
    assert torch.equal(loaded(x), seed(x))
    info = store.stat(aid)
    assert (info["id"], info["blueprint_id"], info["template"]) == (aid, bid, template)
    assert info["tags"] == sorted([host, "test"]) and info["weights_size"] == len(weights)


def test_untrained_seed_validates_fully(store: Urza) -> None:
    aid = publish_seed(store, make_seed(trained=False))
    report = store.get(aid)[0]["validation"]
    assert report["at_init"] is True and "zero_init" in report["checks"]


def test_load_converts_dtype_and_never_draws_random_numbers(store: Urza) -> None:
    seed = make_seed("norm_mlp", "linear")
    aid = publish_seed(store, seed)
    state = torch.random.get_rng_state()
    loaded = load_seed(store, aid, dtype=torch.float64)
    assert torch.equal(torch.random.get_rng_state(), state)  # built on meta, weights copied in
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    assert all(torch.equal(p.float(), q) for p, q in zip(loaded.parameters(), seed.parameters()))


def test_manifest_shapes_are_symbolic(store: Urza) -> None:
    conv = seed_manifest(make_seed("conv3x3", "conv2d"))
    assert conv["input_shape"] == [-1, 4, -1, -1] and conv["output_shape"] == [-1, 6, -1, -1]
    lin = seed_manifest(make_seed("lowrank", "linear"))
    assert lin["input_shape"] == [-1, 16] and lin["output_shape"] == [-1, 8]
    assert lin["device"] == "cpu" and lin["dtype"] == "float32"


def test_publish_refuses_an_invalid_seed(store: Urza) -> None:
    seed = make_seed()
    with torch.no_grad():
        seed.fc1.weight[0, 0] = float("nan")
    with pytest.raises(SeedValidationError, match="not finite"):
        publish_seed(store, seed)
    with pytest.raises(InvalidArgumentError, match="SeedModule"):
        publish_seed(store, torch.nn.Linear(3, 3))  # type: ignore[arg-type]
    assert store.list() == [] and store.verify()["checked"] == 0


def test_default_root_and_artifact_ids_across_processes(tmp_path: Path) -> None:
    code = (
        "import json\n"
        "from esper.urza import Urza, publish_seed\n"
        "from esper import karn\n"
        "from test_urza import make_seed\n"
        "with Urza() as s:\n"
        "    print(json.dumps([s.root, publish_seed(s, make_seed('bottleneck', 'conv2d', seed=3), tags=['a'])]))\n"
    )
    env = dict(os.environ, ESPER_HOME=str(tmp_path / "home"), ESPER_GO_MAXPROCS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    root, their_id = json.loads(proc.stdout)
    assert root == str(tmp_path / "home" / "urza")
    with Urza(root) as s:
        assert publish_seed(s, make_seed("bottleneck", "conv2d", seed=3), tags=["a"]) == their_id
        assert [r["id"] for r in s.list()] == [their_id]
        assert same_weights(load_seed(s, their_id), make_seed("bottleneck", "conv2d", seed=3))


# ------------------------------------------------------------------------------------------------
# Queries, delete, handle discipline
# ------------------------------------------------------------------------------------------------


def test_list_filters(store: Urza) -> None:
    a = publish_seed(store, make_seed("residual_mlp", "linear", seed=1), tags=["digits", "fast"])
    b = publish_seed(store, make_seed("residual_mlp", "linear", seed=2), tags=["digits"])
    c = publish_seed(store, make_seed("conv3x3", "conv2d"), tags=["images"])
    bid = store.stat(a)["blueprint_id"]
    assert {r["id"] for r in store.list()} == {a, b, c}
    assert {r["id"] for r in store.list(blueprint_id=bid)} == {a, b}
    assert {r["id"] for r in store.list(tag="digits")} == {a, b}
    assert [r["id"] for r in store.list(tag="digits", tags=["fast"])] == [a]
    assert [r["id"] for r in store.list(template="conv3x3")] == [c]
    assert [r["id"] for r in store.list(input_shape=[32, 4, 28, 28])] == [c]  # -1 matches any size
    assert store.list(dtype="float16") == [] and len(store.list(device="cpu")) == 3
    assert len(store.list(limit=2)) == 2
    assert [r["id"] for r in store.list()][0] == c  # newest first
    with pytest.raises(InvalidArgumentError, match="limit -1 is negative"):
        store.list(limit=-1)


def test_show_stat_delete(store: Urza) -> None:
    aid = publish_seed(store, make_seed())
    shown = store.show(aid)
    assert shown["id"] == aid and shown["info"] == store.stat(aid) and shown["manifest"] == store.get(aid)[0]
    store.delete(aid)
    with pytest.raises(NotFoundError):
        store.get(aid)
    with pytest.raises(NotFoundError):
        store.delete(aid)
    with pytest.raises(InvalidArgumentError, match="64 lowercase hex digits"):
        store.get("../../etc/passwd")
    assert store.list() == []


def test_handle_discipline(tmp_path: Path) -> None:
    s = Urza(tmp_path)
    assert s.root == str(tmp_path) and repr(s) == f"Urza({str(tmp_path)!r})"
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(s)
    s.close()
    s.close()  # idempotent
    with pytest.raises(EsperError, match="closed"):
        s.list()


# ------------------------------------------------------------------------------------------------
# Refusals: malformed manifests at put, corrupted files on disk
# ------------------------------------------------------------------------------------------------


def _put_cases() -> list[tuple[str, Callable[[dict[str, Any], bytes], tuple[Any, bytes]], str]]:
    def edit(**changes: Any) -> Callable[[dict[str, Any], bytes], tuple[Any, bytes]]:
        return lambda m, w: ({**m, **changes}, w)

    def drop(key: str) -> Callable[[dict[str, Any], bytes], tuple[Any, bytes]]:
        return lambda m, w: ({k: v for k, v in m.items() if k != key}, w)

    def bad_op(m: dict[str, Any], w: bytes) -> tuple[Any, bytes]:
        ir = copy.deepcopy(m["blueprint"])
        ir["ops"][0]["op"] = "softmax"
        return {**m, "blueprint": ir}, w

    return [
        ("not json", lambda m, w: ('{"blueprint": ', w), "invalid manifest"),
        ("unknown field", edit(bogus=1), 'unknown field "bogus"'),
        ("no blueprint", drop("blueprint"), "blueprint is required"),
        ("bad op", bad_op, "softmax"),
        ("dtype", edit(dtype="float8"), 'dtype "float8" is not one of'),
        ("device", edit(device="CUDA"), 'device "CUDA" must be'),
        ("shape", edit(input_shape=[]), "input_shape must have 1 to 8 dims"),
        ("param_count", edit(param_count=5), r"param_count 5 differs from the blueprint's \d+"),
        ("blueprint_id", edit(blueprint_id="0" * 64), "is not the blueprint's id"),
        ("weights_sha256", edit(weights_sha256="a" * 64), "weights_sha256 a+, the weights hash to"),
        ("weights_size", edit(weights_size=3), "weights_size 3, the weights are"),
        ("weights", lambda m, w: (m, b"not safetensors"), "invalid safetensors weights"),
        ("truncated weights", lambda m, w: (m, w[: len(w) - 7]), "invalid safetensors weights"),
    ]


@pytest.mark.parametrize(("name", "mangle", "message"), _put_cases(), ids=[c[0] for c in _put_cases()])
def test_put_refuses_malformed_artifacts(store: Urza, name: str, mangle: Callable[..., Any], message: str) -> None:
    seed = make_seed()
    manifest, weights = mangle(seed_manifest(seed), save_weights(seed))
    with pytest.raises(InvalidArgumentError, match=message):
        store.put(manifest, weights)
    assert store.list() == []
    report = store.verify()
    assert report["checked"] == 0 and report["leftovers"] == []  # nothing was written


def test_weights_that_do_not_match_the_blueprint_are_not_loaded(store: Urza) -> None:
    # Valid for Urza (a well-formed manifest and safetensors file), but the tensors are another IR's.
    manifest = seed_manifest(make_seed("residual_mlp", "linear"))
    other = save_weights(make_seed("lowrank", "linear"))
    aid = store.put(manifest, other)
    with pytest.raises(InvalidArgumentError, match=rf"{aid[:16]}: weights do not match the module"):
        load_seed(store, aid)
    wrong_shape = save_safetensors({k: torch.zeros(1) for k in make_seed().state_dict()})
    aid = store.put(manifest, wrong_shape)
    with pytest.raises(InvalidArgumentError, match=r"weight 'fc1.weight': expected \(32, 16\)"):
        load_seed(store, aid)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _malformed_manifest(store: Urza, target: str, other: str) -> str:
    """A manifest whose bytes hash to its name (so only decoding can refuse it), with weights."""
    text = b'{"blueprint": {"version": 1}, "weights_sha256": 42'
    aid = hashlib.sha256(text).hexdigest()
    object_path(store, aid, ".json").parent.mkdir(parents=True, exist_ok=True)
    object_path(store, aid, ".json").write_bytes(text)
    object_path(store, aid, ".safetensors").write_bytes(object_path(store, target, ".safetensors").read_bytes())
    return aid


def _corrupt(kind: str, store: Urza, target: str, other: str) -> str:
    """Damages artifact target (other is a valid artifact of the same size); returns the bad id."""
    w, m = object_path(store, target, ".safetensors"), object_path(store, target, ".json")
    if kind == "flip weights":
        _flip(w, w.stat().st_size - 3)  # a weight's byte: still well-formed safetensors
    elif kind == "flip manifest":
        _flip(m, 20)
    elif kind == "truncate weights":
        _truncate(w)
    elif kind == "truncate manifest":
        _truncate(m)
    elif kind == "forged weights":
        w.write_bytes(object_path(store, other, ".safetensors").read_bytes())
    elif kind == "missing weights":
        w.unlink()
    elif kind == "malformed manifest":
        return _malformed_manifest(store, target, other)
    return target


CORRUPTIONS = {
    "flip weights": r"weights hash to [0-9a-f]{64}, manifest says [0-9a-f]{64}",
    "flip manifest": r"manifest hashes to [0-9a-f]{64}, not its id",
    "truncate weights": r"weights truncated: \d+ bytes, manifest says \d+",
    "truncate manifest": r"manifest hashes to [0-9a-f]{64}, not its id",
    "forged weights": r"weights hash to [0-9a-f]{64}, manifest says [0-9a-f]{64}",
    "missing weights": r"weights file is missing",
    "malformed manifest": r"manifest does not decode",
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_damaged_artifact_is_refused_and_the_rest_survive(store: Urza, kind: str) -> None:
    seeds = [make_seed(seed=1), make_seed(seed=2), make_seed("conv3x3", "conv2d")]
    ids = [publish_seed(store, s) for s in seeds]
    assert object_path(store, ids[0], ".safetensors").stat().st_size == \
        object_path(store, ids[1], ".safetensors").stat().st_size  # so forging keeps the size
    bad = _corrupt(kind, store, ids[0], ids[1])
    survivors = [(aid, s) for aid, s in zip(ids, seeds) if aid != bad]

    with pytest.raises(CorruptError, match=CORRUPTIONS[kind]) as exc:
        store.get(bad)
    assert bad in str(exc.value)  # the message names the artifact
    with pytest.raises(CorruptError):
        load_seed(store, bad)
    cache = KernelCache(1 << 20)
    with pytest.raises(CorruptError):
        cache.get_or_load(store, bad)
    stats = cache.stats()
    assert (stats["entries"], stats["modules"], stats["builds"]) == (0, 0, 0)  # nothing loaded

    for aid, seed in survivors:
        assert same_weights(load_seed(store, aid), seed)
    report = store.verify()
    assert {p["id"] for p in report["bad"]} == {bad}
    assert report["ok"] == len(survivors) and report["checked"] == len(survivors) + 1
    removed = store.gc()["removed"]
    assert {p["id"] for p in removed} == {bad}
    assert not object_path(store, bad, ".json").exists() and not object_path(store, bad, ".safetensors").exists()
    after = store.verify()
    assert after["bad"] == [] and after["ok"] == len(survivors)
    assert {r["id"] for r in store.list()} == {aid for aid, _ in survivors}
    with pytest.raises(NotFoundError):
        store.get(bad)
    for aid, seed in survivors:
        assert same_weights(cache.get_or_load(store, aid), seed)


# ------------------------------------------------------------------------------------------------
# Kernel cache
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def artifacts(store: Urza) -> list[tuple[str, SeedModule]]:
    seeds = [make_seed("residual_mlp", "linear", seed=i, width=8 * (i + 1)) for i in range(6)]
    return [(publish_seed(store, s), s) for s in seeds]


def test_cache_stays_within_its_bound(store: Urza, artifacts: list[tuple[str, SeedModule]]) -> None:
    sizes = {aid: sum(len(b) for b in store.get_bytes(aid)) + 8 for aid, _ in artifacts}
    bound = max(sizes.values()) * 2
    with KernelCache(bound) as cache:
        evicted: list[str] = []
        for _ in range(3):
            for aid, _ in artifacts:
                evicted += cache.put_artifact(aid, *store.get_bytes(aid))
                s = cache.stats()
                assert 0 < s["bytes"] <= bound == s["max_bytes"]
        s = cache.stats()
        assert s["evictions"] == len(evicted) > 0 and s["entries"] <= 2
        # Building through the cache evicts too, and drops the modules of evicted artifacts.
        for aid, seed in artifacts:
            assert same_weights(cache.get_or_load(store, aid), seed)
            assert cache.stats()["bytes"] <= bound
        assert cache.stats()["modules"] == cache.stats()["entries"] <= 2


def test_build_hit_costs_no_rebuild_and_cache_hit_no_disk_read(store: Urza,
                                                                artifacts: list[tuple[str, SeedModule]]) -> None:
    aid, seed = artifacts[0]
    cache = KernelCache(1 << 20)
    first = cache.get_or_load(store, aid, copy=False)
    s = cache.stats()
    assert (s["misses"], s["store_loads"], s["builds"], s["build_misses"], s["build_hits"]) == (1, 1, 1, 1, 0)
    assert cache.get_or_load(store, aid, copy=False) is first  # the cached module itself
    copied = cache.get_or_load(store, aid)  # default copy=True: a private deep copy
    assert copied is not first and same_weights(copied, first)
    with torch.no_grad():
        copied.fc1.weight.add_(1.0)
    assert same_weights(cache.get_or_load(store, aid), seed)  # the cached module is untouched
    s = cache.stats()
    assert (s["builds"], s["build_hits"], s["hits"], s["misses"]) == (1, 3, 0, 1)  # no rebuild, no Go call

    # Modules dropped: the bytes come from Go's cache, not the disk (the store no longer has them).
    store.delete(aid)
    cache.clear_modules()
    again = cache.get_or_load(store, aid)
    s = cache.stats()
    assert same_weights(again, seed) and (s["hits"], s["store_loads"], s["builds"]) == (1, 1, 2)
    assert cache.remove(aid) is True and cache.remove(aid) is False
    with pytest.raises(NotFoundError):
        cache.get_or_load(store, aid)


def test_compatibility_misses_are_counted(store: Urza, artifacts: list[tuple[str, SeedModule]]) -> None:
    aid, seed = artifacts[1]
    cache = KernelCache(1 << 20, copy=False)
    cache.get_or_load(store, aid, "cpu", torch.float32, input_shape=[-1, 16])
    wide = cache.get_or_load(store, aid, "cpu", torch.float64)  # the entry is float32: compat miss
    s = cache.stats()
    assert (s["compat_misses"], s["hits"], s["misses"], s["builds"]) == (1, 0, 1, 2)
    assert all(p.dtype == torch.float64 for p in wide.parameters())
    assert all(torch.equal(p.float(), q) for p, q in zip(wide.parameters(), seed.parameters()))
    cache.clear_modules()
    cache.get_or_load(store, aid, "cpu", torch.float32, input_shape=[32, 16])  # fits: a hit
    with pytest.raises(InvalidArgumentError, match=r"input shape \[-1, 16\] does not fit .*\[32, 17\]"):
        cache.get_or_load(store, aid, "cpu", torch.float32, input_shape=[32, 17])
    s = cache.stats()
    assert (s["hits"], s["compat_misses"]) == (1, 1)  # the build hit refused the shape before Go was asked
    cache.clear_modules()
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        cache.get_or_load(store, aid, "cpu", torch.float32, input_shape=[32, 17])
    assert cache.stats()["compat_misses"] == 2


def test_artifact_larger_than_the_cache_is_served_uncached(store: Urza,
                                                           artifacts: list[tuple[str, SeedModule]]) -> None:
    aid, seed = artifacts[-1]
    cache = KernelCache(64)
    assert same_weights(cache.get_or_load(store, aid), seed)
    with pytest.raises(BudgetError, match="holds at most 64"):
        cache.put_artifact(aid, *store.get_bytes(aid))
    s = cache.stats()
    assert (s["rejected"], s["entries"], s["bytes"], s["modules"]) == (2, 0, 0, 0)
    assert same_weights(cache.get_or_load(store, aid), seed)  # nothing kept: loaded and built again
    s = cache.stats()
    assert (s["store_loads"], s["builds"], s["modules"]) == (2, 2, 0)
    with pytest.raises(InvalidArgumentError, match="max bytes 0 must be > 0"):
        KernelCache(0)


def test_cache_from_several_threads(store: Urza, artifacts: list[tuple[str, SeedModule]]) -> None:
    cache = KernelCache(1 << 20)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(12):
                aid, seed = artifacts[(i + k) % len(artifacts)]
                assert same_weights(cache.get_or_load(store, aid), seed)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = cache.stats()
    assert s["build_hits"] + s["build_misses"] == 48 and s["modules"] == len(artifacts)


@pytest.mark.cuda
def test_cuda_load_and_device_compatibility(store: Urza, artifacts: list[tuple[str, SeedModule]]) -> None:
    aid, seed = artifacts[0]
    gpu = load_seed(store, aid, device="cuda")
    assert next(gpu.parameters()).is_cuda
    assert all(torch.equal(p.cpu(), q) for p, q in zip(gpu.parameters(), seed.parameters()))
    cache = KernelCache(1 << 20, copy=False)
    cache.get_or_load(store, aid, "cpu")
    on_gpu = cache.get_or_load(store, aid, "cuda:0")  # the entry was validated on cpu: compat miss
    assert next(on_gpu.parameters()).device == torch.device("cuda:0")
    assert cache.stats()["compat_misses"] == 1
    published = publish_seed(store, copy.deepcopy(seed).cuda(), tags=["gpu"])
    assert store.stat(published)["device"] == "cuda"
    cache.get_or_load(store, published, "cuda:0")
    cache.clear_modules()
    cache.get_or_load(store, published, "cuda:0")  # "cuda" fits "cuda:0": a hit
    assert cache.stats()["hits"] == 1


def test_cancel_stops_a_verify_in_flight(store: Urza) -> None:
    """esper_cancel from another thread stops a long verify with CancelledError; the store
    is intact and a later verify runs to completion."""
    ir = karn.instantiate("residual_mlp", {"kind": "linear", "in": 256, "out": 256}, width=256)
    seed = build_seed(ir)
    for i in range(60):  # ~0.5 MB each: verify re-hashes ~30 MB
        with torch.no_grad():
            for p in seed.parameters():
                p.fill_(float(i + 1))
        store.put(seed_manifest(seed, tags=[f"n{i}"]), save_weights(seed))
    outcome: list[BaseException | dict] = []

    def run() -> None:
        try:
            outcome.append(store.verify())
        except BaseException as exc:  # noqa: BLE001 - inspected below
            outcome.append(exc)

    for _ in range(5):  # the cancel must land while verify runs; retry if verify won the race
        outcome.clear()
        t = threading.Thread(target=run)
        t.start()
        while t.is_alive():
            store.cancel()
            t.join(timeout=0.001)
        if isinstance(outcome[0], CancelledError):
            break
    assert isinstance(outcome[0], CancelledError), outcome
    report = store.verify()
    assert report["checked"] == 60 and not report["bad"]
