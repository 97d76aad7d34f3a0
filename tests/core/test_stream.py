"""Layer-streamed execution computes what the whole model computes, with one block in memory at a time.

Tolerance: the streamed model runs the same transformers modules on the same float32 weights in the
same order, so outputs agree to float32 rounding; we allow 1e-6 relative to the largest |value|
(observed: exactly 0 for every family).
"""

from __future__ import annotations

import pytest
import torch

from gaugeport.core.errors import GaugeportError
from gaugeport.core.stream import check_device, is_dropped, load_streamed, model_device, stream_info
from gaugeport.core.verify import load_model
from gaugeport.models.tiny import TINY_CONFIGS, probe_ids

REL_TOL = 1e-6
# families whose stored tensors transformers merges while loading (per-expert MoE weights into fused
# ones): they run whole, with a note
NOT_STREAMED = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "glm4_moe"}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(a.abs().max().item(), 1e-12)


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
@torch.no_grad()
def test_streamed_model_gives_the_whole_models_outputs_and_hidden_states(tiny_dir, model_type):
    path = tiny_dir(model_type)
    ids = probe_ids(96, n_seq=3, seq_len=10)
    whole = load_model(path)(input_ids=ids, output_hidden_states=True)
    model = load_streamed(path)
    streamed = model(input_ids=ids, output_hidden_states=True)
    info = stream_info(model)
    assert info.streamed is (model_type not in NOT_STREAMED), info.note
    key = "logits"
    assert _rel(getattr(whole, key), getattr(streamed, key)) <= REL_TOL
    assert len(whole.hidden_states) == len(streamed.hidden_states)
    for hw, hs in zip(whole.hidden_states, streamed.hidden_states, strict=True):
        assert _rel(hw, hs) <= REL_TOL


@torch.no_grad()
def test_each_forward_loads_every_block_once_and_frees_it(tiny_dir):
    model = load_streamed(tiny_dir("llama"))
    info = stream_info(model)
    blocks = model.model.layers
    assert all(is_dropped(p) for p in blocks.parameters())  # nothing of a block before the call
    assert is_dropped(model.model.embed_tokens.weight)  # embeddings stream too
    assert not is_dropped(model.model.norm.weight)
    seen = []
    blocks[1].register_forward_pre_hook(lambda m, a: seen.append(
        [is_dropped(p) for p in blocks[0].parameters()] + [is_dropped(p) for p in blocks[1].parameters()]))
    model(input_ids=probe_ids(96))
    n = len(list(blocks[0].parameters()))
    assert seen == [[True] * n + [False] * n]  # while block 1 runs, block 0 is gone
    assert all(is_dropped(p) for p in blocks.parameters())
    assert info.blocks_loaded == info.n_blocks == 2
    model(input_ids=probe_ids(96))
    assert info.blocks_loaded == 4
    assert model_device(model).type == "cpu"


@torch.no_grad()
def test_the_blocks_convert_their_weights_into_one_reused_area(tiny_dir, monkeypatch):
    """Each unit's float32 weights go into the area the unit before used (grown only when a larger unit comes):
    a forward allocates fewer areas than it loads units, the same number every forward, and the outputs are
    the whole model's."""
    import gaugeport.core.buffers as buffers

    allocated = []
    real = buffers.reusable_buffer
    monkeypatch.setattr(buffers, "reusable_buffer", lambda n: allocated.append(n) or real(n))
    path = tiny_dir("llama")
    model = load_streamed(path)
    ids = probe_ids(96)
    out = model(input_ids=ids).logits
    first = len(allocated)
    units = stream_info(model).n_blocks + 2  # the blocks, the input embedding and the head
    assert 1 <= first < units
    model(input_ids=ids)
    assert len(allocated) == 2 * first
    assert _rel(load_model(path)(input_ids=ids).logits, out) <= REL_TOL


@torch.no_grad()
def test_the_blocks_do_not_hold_an_area_the_size_of_the_vocabulary(tmp_path, monkeypatch):
    """An embedding larger than a block gives its area back after its forward: block 0 loads into an area
    of its own size, which the other blocks reuse."""
    import gaugeport.core.buffers as buffers
    from gaugeport.models.tiny import tiny_model

    tiny_model("llama", 0, vocab_size=4096).save_pretrained(tmp_path / "wide_vocab")
    allocated = []
    real = buffers.reusable_buffer
    monkeypatch.setattr(buffers, "reusable_buffer", lambda n: allocated.append(n) or real(n))
    model = load_streamed(tmp_path / "wide_vocab")
    blocks = model.model.layers
    block_bytes = sum(4 * p.numel() for p in blocks[0].parameters())
    embedding_bytes = 4 * model.model.embed_tokens.weight.numel()
    assert embedding_bytes > 2 * block_bytes
    seen = []
    for block in blocks:
        block.register_forward_pre_hook(lambda m, a: seen.append(list(allocated)))
    model(input_ids=probe_ids(96))
    assert seen[0][0] >= embedding_bytes and block_bytes <= seen[0][1] < embedding_bytes
    assert all(s == seen[0] for s in seen)  # the later blocks reuse block 0's area


@torch.no_grad()
def test_a_forward_stopped_inside_a_block_leaves_no_weights_behind(tiny_dir):
    """A hook that stops the forward early (activation collection does) skips the blocks' own drop; the
    whole model's hook drops every unit anyway, so no parameter views an area the next forward rewrites."""
    model = load_streamed(tiny_dir("llama"))
    blocks = model.model.layers

    class Stop(Exception):
        pass

    def stop(*_):
        raise Stop

    handle = blocks[1].mlp.register_forward_pre_hook(stop)
    with pytest.raises(Stop):
        model(input_ids=probe_ids(96))
    assert all(is_dropped(p) for p in blocks.parameters())
    assert is_dropped(model.model.embed_tokens.weight)
    handle.remove()
    whole = load_model(tiny_dir("llama"))(input_ids=probe_ids(96)).logits
    assert _rel(whole, model(input_ids=probe_ids(96)).logits) <= REL_TOL


def test_a_family_that_cannot_stream_runs_whole_and_says_why(tiny_dir):
    from gaugeport.core.stream import StreamFallbackWarning

    with pytest.warns(StreamFallbackWarning, match="loaded whole"):
        model = load_streamed(tiny_dir("mixtral"))
    info = stream_info(model)
    assert not info.streamed and "converts" in info.note
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_streaming_refuses_a_checkpoint_missing_a_tensor(tmp_path, tiny_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    from gaugeport.core.errors import CheckpointError

    src = tiny_dir("llama")
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="random"):
        load_streamed(dst)


# On a machine with CUDA these error paths cannot occur (the verbs run on the GPU instead); every CI machine
# here lacks CUDA, so they run there.
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(GaugeportError, match="no CUDA device"):
        check_device("cuda")
    with pytest.raises(GaugeportError, match="unknown device"):
        check_device("tpu")


# On a machine with CUDA these error paths cannot occur (the verbs run on the GPU instead); every CI machine
# here lacks CUDA, so they run there.
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_verify_on_cuda_without_a_gpu_exits_2(cli, tiny_dir):
    path = tiny_dir("llama")
    code, _, err = cli("verify", path, path, "--device", "cuda")
    assert code == 2 and "no CUDA device" in err and "hint:" in err


def test_verify_streams_both_models(tiny_dir, monkeypatch):
    import gaugeport.core.stream as stream
    from gaugeport.core.verify import verify_checkpoints

    built = []
    real = stream.load_streamed
    monkeypatch.setattr(stream, "load_streamed", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    path = tiny_dir("gpt2")
    assert verify_checkpoints(path, path).ok
    assert [stream_info(m).streamed for m in built] == [True, True]
    assert all(stream_info(m).blocks_loaded == 2 for m in built)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma2"])
def test_collect_on_streamed_models_gives_the_whole_models_moments(tiny_dir, model_type):
    """Moments from streamed models equal those from whole models (float64 accumulation of the same
    float32 activations; tolerance 1e-9 relative), and the fingerprints name the same checkpoints."""
    from gaugeport.estimate.activations import collect_moments

    a, b = tiny_dir(model_type), tiny_dir(model_type, 1)
    batches = [probe_ids(96, n_seq=2, seq_len=12, seed=s) for s in range(3)]
    whole = collect_moments(load_model(a), load_model(b), batches, progress=False)
    streamed = collect_moments(load_streamed(a), load_streamed(b), batches, progress=False)
    assert (streamed.model_a, streamed.model_b) == (whole.model_a, whole.model_b)
    assert streamed.sites.keys() == whole.sites.keys()
    for site, cm in whole.sites.items():
        for name in ("mean_a", "mean_b", "comoment", "m2_a"):
            w, s = getattr(cm, name), getattr(streamed.sites[site], name)
            assert _rel(w, s) <= 1e-9, (site, name)


# On a machine with CUDA these error paths cannot occur (the verbs run on the GPU instead); every CI machine
# here lacks CUDA, so they run there.
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
@pytest.mark.parametrize("verb", ["collect", "align"])
def test_collect_and_align_on_cuda_without_a_gpu_exit_2(cli, tiny_dir, tmp_path, verb):
    path = tiny_dir("llama")
    code, _, err = cli(verb, path, path, "--out", tmp_path / "x", "--device", "cuda", "--tokens", "64")
    assert code == 2 and "no CUDA device" in err


def test_weight_difference_is_taken_over_every_chunk(monkeypatch):
    """The float64 comparison runs a chunk at a time: a difference in the last chunk counts, and so
    does the largest |value| (the scale) found there."""
    import gaugeport.core.verify as verify

    monkeypatch.setattr(verify, "_DIFF_CHUNK", 7)
    a = torch.zeros(50)
    a[3] = 1.0
    b = a.clone()
    b[48] = 0.25
    assert verify._max_diff_and_scale(a, b) == (0.25, 1.0)
    a[49] = -2.0
    assert verify._max_diff_and_scale(a, b) == (2.0, 2.0)
