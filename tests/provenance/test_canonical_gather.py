"""The streamed canonical pass gathers each tensor part by part (residual and hidden gauge composed into
one row and one column gather, on the bits): its bytes are those of transforming each tensor whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaugeport.core import gather
from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.errors import GaugeportError
from gaugeport.core.fullgauge import FullGauge, FullTransform, apply_full_gauge_to_checkpoint, random_full_gauge_for
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.hidden import get_hidden_spec
from gaugeport.models.tiny import tiny_model
from gaugeport.provenance import canonical
from gaugeport.provenance.canonical import canonical_gauge, canonicalize, fingerprint

# numba is an optional extra, used only with GAUGEPORT_GATHER=numba: the numpy gather is the default and always
# runs; `make test` installs the dev extras (numba included), so CI runs both and checks they give the same bytes.
BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not gather.numba_available(), reason="numba (the optional extra gaugeport[fast]) is not installed"))]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run the test with the compiled gather, then with the pure-numpy fallback."""
    if request.param == "numpy":
        monkeypatch.delenv("GAUGEPORT_GATHER", raising=False)  # the default
    else:
        monkeypatch.setenv("GAUGEPORT_GATHER", "numba")
    gather._numba_gather.cache_clear()
    yield request.param
    gather._numba_gather.cache_clear()
    assert request.param == "numpy" or gather.backend() == "numba"


# ----------------------------------------------------------------------------- the kernel
def _compiled():
    """The compiled kernel (None without numba), whatever GAUGEPORT_GATHER says."""
    if not gather.numba_available():
        return None
    import numba

    return numba.njit(nogil=True, cache=True, boundscheck=False)(gather._gather_loop)


def test_asking_for_numba_without_it_is_an_error_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "numba", None)  # import numba now raises ImportError
    monkeypatch.setenv("GAUGEPORT_GATHER", "numba")
    gather._numba_gather.cache_clear()
    try:
        with pytest.raises(GaugeportError) as err:
            gather.backend()
        assert "gaugeport[fast]" in err.value.hint
    finally:
        gather._numba_gather.cache_clear()


def test_the_default_gather_is_numpy_and_numba_is_opt_in(monkeypatch):
    monkeypatch.delenv("GAUGEPORT_GATHER", raising=False)
    gather._numba_gather.cache_clear()
    try:
        assert gather.backend() == "numpy"
        monkeypatch.setenv("GAUGEPORT_GATHER", "nope")
        gather._numba_gather.cache_clear()
        with pytest.raises(GaugeportError, match="GAUGEPORT_GATHER='nope'"):
            gather.backend()
    finally:
        gather._numba_gather.cache_clear()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([np.int16, np.int32, np.int64]), st.integers(1, 9), st.integers(1, 40), st.integers(0, 2**31))
def test_gather_is_a_row_and_column_pick_with_sign_bit_flips(dtype, n_rows, n_cols, seed):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    src = rng.integers(info.min, info.max, (n_rows + 3, n_cols), dtype=dtype, endpoint=True)
    rows = rng.integers(0, n_rows + 3, n_rows)
    cols = rng.permutation(n_cols)
    sign = np.array(info.min, dtype=dtype)
    row_flip = np.where(rng.random(n_rows) < 0.5, sign, 0).astype(dtype)
    col_flip = np.where(rng.random(n_cols) < 0.5, sign, 0).astype(dtype)
    expected = src[rows][:, cols] ^ row_flip[:, None] ^ col_flip[None, :]
    got = {}
    for name, kernel in (("numpy", gather._numpy_gather), ("numba", _compiled())):
        if kernel is None:
            continue
        out = np.empty((n_rows, n_cols), dtype=dtype)
        kernel(src, rows, cols, row_flip, col_flip, out)
        got[name] = out
        assert np.array_equal(out, expected), name


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.sampled_from([1, 2, 3, 4, 8]), st.integers(0, 2**31))
def test_column_block_is_the_largest_aligned_run_the_permutation_keeps_together(n_blocks, b, seed):
    rng = np.random.default_rng(seed)
    cols = (rng.permutation(n_blocks)[:, None] * b + np.arange(b)[None, :]).reshape(-1)  # whole blocks of b moved
    got = gather.column_block(cols)
    assert got % b == 0  # never less than the blocks it was built from
    blocks = cols.reshape(-1, got)  # and what it says is true: aligned runs of `got` consecutive columns
    assert np.array_equal(blocks, blocks[:, :1] + np.arange(got)[None, :]) and not (blocks[:, 0] % got).any()


def test_column_block_of_single_columns_out_of_order_is_one():
    assert gather.column_block(np.array([1, 0, 2, 3])) == 1
    assert gather.column_block(np.array([2, 3, 0, 1])) == 2
    assert gather.column_block(np.array([1, 2, 3, 0])) == 1  # a run of 3 starting at 1 is no aligned block
    assert gather.column_block(np.arange(6)) == 6
    assert gather.column_block(np.array([2, 3, 4, 5])) == 2  # one run of 4 from column 2: aligned blocks of 2


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([np.int16, np.int32]), st.integers(1, 9), st.integers(1, 5), st.sampled_from([2, 4, 8]),
       st.integers(0, 2**31))
def test_gathering_whole_blocks_of_columns_gives_the_element_gather(dtype, n_rows, n_blocks, b, seed):
    """Heads moved together (``block`` > 1): the same bytes, flips of rows and of single columns included."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    n_cols = n_blocks * b
    src = rng.integers(info.min, info.max, (n_rows + 2, n_cols), dtype=dtype, endpoint=True)
    rows = rng.integers(0, n_rows + 2, n_rows)
    cols = (rng.permutation(n_blocks)[:, None] * b + np.arange(b)[None, :]).reshape(-1)
    sign = np.array(info.min, dtype=dtype)
    row_flip = np.where(rng.random(n_rows) < 0.5, sign, 0).astype(dtype)
    col_flip = np.where(rng.random(n_cols) < 0.5, sign, 0).astype(dtype)
    expected = src[rows][:, cols] ^ row_flip[:, None] ^ col_flip[None, :]
    out = np.empty((n_rows, n_cols), dtype=dtype)
    gather.gather_rows_cols(src, rows, cols, row_flip, col_flip, out, gather.column_block(cols))
    assert np.array_equal(out, expected)


def _bf16_case(seed):
    """A 50 x 33 int16 source, 41 rows (repeats allowed) and a column permutation to pick, random sign
    flips of both, and the expected output."""
    rng = np.random.default_rng(seed)
    src = rng.integers(-2**15, 2**15, (50, 33), dtype=np.int16)
    rows, cols = rng.integers(0, 50, 41), rng.permutation(33)
    row_flip = np.where(rng.random(41) < 0.5, -0x8000, 0).astype(np.int16)
    col_flip = np.where(rng.random(33) < 0.5, -0x8000, 0).astype(np.int16)
    return (src, rows, cols, row_flip, col_flip), src[rows][:, cols] ^ row_flip[:, None] ^ col_flip[None, :]


@pytest.mark.parametrize("sub_bytes", [1, 70, 200])
def test_the_numpy_gather_done_a_few_rows_at_a_time_gives_the_same_bytes(sub_bytes, monkeypatch):
    """Its cache-sized blocks of rows (1 MB in use) cut at any row: 1, 2 and 6 rows of 33 int16 here."""
    args, expected = _bf16_case(sub_bytes)
    monkeypatch.setattr(gather, "_SUB_BYTES", sub_bytes)
    out = np.empty((41, 33), dtype=np.int16)
    gather._numpy_gather(*args, out)
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("ways", [2, 3])
def test_a_gather_cut_into_row_blocks_on_threads_gives_the_same_bytes(ways, monkeypatch):
    (src, rows, cols, row_flip, col_flip), expected = _bf16_case(ways)
    calls = []
    kernel = gather._numba_gather() or gather._numpy_gather

    def counted(src, rows, *rest):
        calls.append(len(rows))
        kernel(src, rows, *rest)

    monkeypatch.setattr(gather, "_numba_gather", lambda: counted)
    monkeypatch.setattr(gather, "SPLIT_BYTES", 0)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(ways - 1) as pool:
        monkeypatch.setattr(gather, "_pool", lambda: (pool, ways))
        out = gather.gather_2d(src, rows, cols, row_flip, col_flip, np.empty((41, 33), dtype=np.int16))
    assert np.array_equal(out, expected)
    assert sorted(calls) == sorted(np.diff([41 * k // ways for k in range(ways + 1)]).tolist())


def test_the_sign_bit_flip_is_the_float_negation():
    x = torch.tensor([1.5, -2.0, 0.0, -0.0, 3e-39, 65504.0], dtype=torch.float32).to(torch.bfloat16)
    bits = x.view(torch.int16).numpy()
    out = np.empty((1, bits.size), dtype=np.int16)
    gather.gather_2d(bits[None, :], np.zeros(1, dtype=np.int64), np.arange(bits.size),
                     np.full(1, -0x8000, dtype=np.int16), np.zeros(bits.size, dtype=np.int16), out)
    assert torch.equal(torch.from_numpy(out[0]).view(torch.bfloat16).view(torch.int16), (-x).view(torch.int16))


# ----------------------------------------------------------------------------- the pass
def _reference_fingerprint(path) -> str:
    """Every tensor transformed whole under the canonical gauge, then hashed (the pass before parts)."""
    return fingerprint(path, canonical=canonical_gauge(Checkpoint.open(path)))["fingerprint"]


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "phi3", "gpt_neox", "qwen3", "bert"])
def test_streamed_fingerprint_hashes_the_bytes_of_whole_transforms(model_type, tiny_dir, backend):
    path = tiny_dir(model_type)
    assert fingerprint(path)["fingerprint"] == _reference_fingerprint(path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_canonical_tensors_equal_whole_transforms_in_half_precision(dtype, tmp_path, backend):
    tiny_model("phi3", num_hidden_layers=3).to(dtype).save_pretrained(tmp_path / "src", max_shard_size="30KB")
    can = canonicalize(tmp_path / "src", tmp_path / "c", progress=False)
    src, out = Checkpoint.open(tmp_path / "src"), Checkpoint.open(tmp_path / "c")
    tf = FullTransform(src.spec, src.names, can.gauge, src.d_model, src.config)
    for name in src.names:
        expected, got = tf(name, src.tensor(name)), out.tensor(name)
        assert got.dtype == dtype and torch.equal(got.view(torch.uint8), expected.contiguous().view(torch.uint8)), name
    assert can.fingerprint == _reference_fingerprint(tmp_path / "src")


def test_a_mapped_tensor_holds_the_bytes_a_plain_read_gives(tiny_dir):
    from gaugeport.core.checkpoint import ShardReader

    ckpt = Checkpoint.open(tiny_dir("llama"))
    for shard in ckpt.shards:
        reader = ShardReader(ckpt, shard)
        try:
            for name in reader.entries:
                mapped, read = reader.map(name), reader.read(name)
                assert mapped.dtype == read.dtype and mapped.shape == read.shape
                assert torch.equal(mapped.reshape(-1).view(torch.uint8), read.reshape(-1).view(torch.uint8)), name
        finally:
            reader.close()


def test_a_mapped_tensor_is_checked_finite(tmp_path):
    from safetensors.torch import save_file

    from gaugeport.core.checkpoint import ShardReader
    from gaugeport.core.errors import CheckpointError

    tiny_model("llama").save_pretrained(tmp_path / "m")
    ckpt = Checkpoint.open(tmp_path / "m")
    name = next(n for n in sorted(ckpt.names) if n.endswith("down_proj.weight"))
    shard = ckpt.shard_of[name]
    tensors = {n: ckpt.tensor(n) for n in ckpt.names if ckpt.shard_of[n] == shard}
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[7] = float("inf")
    save_file(tensors, str(tmp_path / "m" / shard), metadata={"format": "pt"})
    reader = ShardReader(Checkpoint.open(tmp_path / "m"), shard)
    try:
        with pytest.raises(CheckpointError, match="down_proj"):
            reader.map(name)
        good = next(n for n in sorted(tensors) if n != name and tensors[n].numel() > 1)
        assert torch.equal(reader.map(good), tensors[good])
    finally:
        reader.close()


def test_a_shard_that_shrank_after_it_was_opened_is_an_error_not_a_crash(tmp_path):
    from gaugeport.core.checkpoint import ShardReader
    from gaugeport.core.errors import CheckpointError

    tiny_model("llama").save_pretrained(tmp_path / "m")
    ckpt = Checkpoint.open(tmp_path / "m")
    shard = sorted(ckpt.shards)[0]
    reader = ShardReader(ckpt, shard)
    try:
        last = max(reader.entries, key=lambda n: reader.entries[n][3])
        size = (tmp_path / "m" / shard).stat().st_size
        with open(tmp_path / "m" / shard, "r+b") as f:
            f.truncate(size - 8)
        with pytest.raises(CheckpointError, match="unexpected end of file"):
            reader.map(last)
    finally:
        reader.close()


def test_parts_of_a_tensor_larger_than_a_part_come_in_order(tiny_dir, monkeypatch, backend):
    path = tiny_dir("llama")
    whole = fingerprint(path)["fingerprint"]
    monkeypatch.setattr(canonical, "PART_BYTES", 200)  # rows of 32 float32 = 128 bytes: one row a part
    assert fingerprint(path)["fingerprint"] == whole == _reference_fingerprint(path)


def test_identical_units_move_whole_and_keep_the_bytes(tmp_path, backend):
    """Two MLP units alike in their first residual coordinates (and everywhere): the keys read past the
    first columns, so the layer's tensors are moved whole for the tie; the bytes stay the reference's."""
    m = tiny_model("llama")
    with torch.no_grad():
        mlp = m.model.layers[0].mlp
        for w in (mlp.gate_proj.weight, mlp.up_proj.weight):
            w[5] = w[2]
        mlp.down_proj.weight[:, 5] = mlp.down_proj.weight[:, 2]
    m.save_pretrained(tmp_path / "src")
    made = []
    real = canonical._Moved.__call__
    original = canonical._Moved.__call__

    def counting(self):
        made.append(self.shape)
        return real(self)

    canonical._Moved.__call__ = counting
    try:
        fp = fingerprint(tmp_path / "src")
    finally:
        canonical._Moved.__call__ = original
    assert made and fp["ties"]["mlp_identical_unit_groups"] >= 1
    assert fp["fingerprint"] == _reference_fingerprint(tmp_path / "src")
    gauged = tmp_path / "g"
    apply_full_gauge_to_checkpoint(tmp_path / "src", random_full_gauge_for(tmp_path / "src", 5), gauged,
                                   progress=False)
    assert fingerprint(gauged)["fingerprint"] == fp["fingerprint"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_leading_moved_is_the_moved_tensor_first_residual_coordinates(dtype, tiny_dir):
    ckpt = Checkpoint.open(tiny_dir("llama"))
    residual = SignedPermutation.random(ckpt.d_model, seed=4)
    rules = ckpt.spec.classify_all(ckpt.names)
    hspec = get_hidden_spec(ckpt.model_type)
    tf = FullTransform(ckpt.spec, ckpt.names, FullGauge(residual), ckpt.d_model, ckpt.config)
    checked = 0
    for name in ckpt.names:
        hit = hspec.match(name)
        rule = rules[name]
        if hit is None:
            continue
        t = ckpt.tensor(name).to(dtype)
        lead = canonical._leading_moved(t, rule, residual, hit[0].axis)
        if lead is None:
            continue
        ax = rule.axes[0]
        expected = tf(name, t).narrow(ax, 0, canonical.PREFIX_COLUMNS).contiguous()
        assert torch.equal(lead.contiguous().view(torch.uint8), expected.view(torch.uint8)), name
        checked += 1
    assert checked == 7 * 2  # q, k, v, o, gate, up, down in each of the 2 layers


@pytest.mark.parametrize("verb", ["fingerprint", "canonicalize"])
@pytest.mark.parametrize(("model_type", "where"), [
    ("llama", "model.embed_tokens.weight"), ("llama", "model.norm.weight"),
    ("bert", "cls.predictions.transform.dense.weight")])
def test_a_non_finite_value_outside_the_layers_is_refused_with_no_output(verb, model_type, where, tmp_path):
    """A non-finite value anywhere, here in a tensor outside the layers, past the leading columns the sort reads:
    an error naming the tensor, and no output."""
    from safetensors.torch import save_file

    from gaugeport.core.errors import CheckpointError

    tiny_model(model_type).save_pretrained(tmp_path / "m")
    ckpt = Checkpoint.open(tmp_path / "m")
    shard = ckpt.shard_of[where]
    tensors = {n: ckpt.tensor(n).clone() for n in ckpt.names if ckpt.shard_of[n] == shard}
    tensors[where].view(-1)[-3] = float("nan")  # in the last part, far from the leading columns the sort reads
    save_file(tensors, str(tmp_path / "m" / shard), metadata={"format": "pt"})
    from gaugeport.core.checkpoint import ShardReader

    reader = ShardReader(Checkpoint.open(tmp_path / "m"), shard)
    try:  # mapped unchecked (the pass gathers such tensors as their pages come in, checking each part)
        assert torch.isnan(reader.map(where, checked=False)).any()
    finally:
        reader.close()
    with pytest.raises(CheckpointError, match=where.replace(".", r"\.")):
        if verb == "fingerprint":
            fingerprint(tmp_path / "m")
        else:
            canonicalize(tmp_path / "m", tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


def test_parts_queued_behind_a_slow_consumer_keep_their_bytes_and_order(tiny_dir, monkeypatch, backend):
    """A slow hash (a stalled disk, for the writer): parts queue up to the limit, each buffer is reused only
    once its part was consumed, so the bytes hashed are the reference's."""
    import time

    path = tiny_dir("llama")
    monkeypatch.setattr(canonical, "PART_BYTES", 200)  # one row a part: many parts per tensor
    real_call = canonical._Hasher.__call__
    most = [0]
    real_sink_call = canonical._Sink.__call__

    def counting_sink(self, *part):
        real_sink_call(self, *part)
        most[0] = max(most[0], len(self.pending))

    def slow(self, *part):
        time.sleep(0.0005)
        real_call(self, *part)

    monkeypatch.setattr(canonical._Hasher, "__call__", slow)
    monkeypatch.setattr(canonical._Sink, "__call__", counting_sink)
    assert fingerprint(path)["fingerprint"] == _reference_fingerprint(path)
    assert most[0] == canonical.PARTS_IN_FLIGHT - 1  # parts did queue, and never more than the buffers allow


def test_canonicalize_queues_deeper_behind_a_slow_writer_and_writes_the_reference_bytes(tmp_path, monkeypatch):
    """A slow disk for the writer: up to WRITE_PARTS_IN_FLIGHT - 1 parts wait (more than the hash alone may
    hold), every buffer is reused only once its part was written, so every written tensor is the whole
    transform's bytes."""
    import time

    from gaugeport.core.fileio import SafetensorsStreamWriter

    tiny_model("llama", num_hidden_layers=2).save_pretrained(tmp_path / "src", max_shard_size="40KB")
    monkeypatch.setattr(canonical, "PART_BYTES", 200)  # a row or two a part: many parts per tensor
    real_write, real_sink_call = SafetensorsStreamWriter.write_part, canonical._Sink.__call__
    most = [0]

    def counting_sink(self, *part):
        real_sink_call(self, *part)
        most[0] = max(most[0], len(self.pending))

    def slow_write(self, name, data):
        time.sleep(0.0005)
        real_write(self, name, data)

    monkeypatch.setattr(SafetensorsStreamWriter, "write_part", slow_write)
    monkeypatch.setattr(canonical._Sink, "__call__", counting_sink)
    can = canonicalize(tmp_path / "src", tmp_path / "c", progress=False)
    assert most[0] == canonical.WRITE_PARTS_IN_FLIGHT - 1 > canonical.PARTS_IN_FLIGHT - 1
    src, out = Checkpoint.open(tmp_path / "src"), Checkpoint.open(tmp_path / "c")
    tf = FullTransform(src.spec, src.names, can.gauge, src.d_model, src.config)
    for name in src.names:
        assert torch.equal(out.tensor(name), tf(name, src.tensor(name))), name
    assert can.fingerprint == _reference_fingerprint(tmp_path / "src")


@pytest.mark.parametrize("n_cols", [11008, 4096, 100])
def test_parts_end_on_file_blocks_where_a_part_holds_enough_rows(n_cols, monkeypatch):
    """A ``down_proj`` row of 11008 bf16 is 22016 bytes: 381 rows would fill 8 MB but end mid-block, so a part
    takes 376 (whole 4096-byte blocks, written with no staging copy); the bytes handed on are the gather's."""
    from gaugeport.core.apply import RowColPlan
    from gaugeport.core.directio import BLOCK

    monkeypatch.setattr(canonical, "PART_BYTES", 1 << 20)
    n_rows = 300
    rng = np.random.default_rng(0)
    src = rng.integers(-2**15, 2**15, (n_rows, n_cols), dtype=np.int16)
    rows, cols = rng.permutation(n_rows), rng.permutation(n_cols)
    plan = RowColPlan((n_rows, n_cols), torch.bfloat16, np.dtype(np.int16), rows, cols, None, None, None)
    got: list[bytes] = []
    emit = canonical._Emitter(lambda name, header, data: got.append(bytes(data)))
    try:
        emit("w", torch.from_numpy(src).view(torch.bfloat16), plan, lambda: None)
        emit.flush()
    finally:
        emit.close()
    assert b"".join(got) == src[rows][:, cols].tobytes()
    row_bytes = 2 * n_cols
    if (1 << 20) // row_bytes >= BLOCK // np.gcd(row_bytes, BLOCK):  # enough rows for whole blocks
        assert all(len(part) % BLOCK == 0 for part in got[:-1])
    assert max(map(len, got)) <= 1 << 20


def test_a_layer_is_mapped_once_the_read_ahead_has_read_it(tiny_dir, monkeypatch):
    """One reader on the disk, in the pass's order: each layer waits for the read-ahead to pass its last tensor."""
    from gaugeport.core.readahead import ReadAhead

    path = tiny_dir("llama")
    waited: list[str] = []
    real = ReadAhead.wait_read
    monkeypatch.setattr(ReadAhead, "wait_read", lambda self, key: (waited.append(key), real(self, key))[1])
    fingerprint(path)
    layers = get_hidden_spec("llama").dims(Checkpoint.open(path).config, 32).n_layers
    names = sorted(Checkpoint.open(path).names)
    last_of_layer = [max(n for n in names if n.startswith(f"model.layers.{i}.")) for i in range(layers)]
    assert waited == last_of_layer
