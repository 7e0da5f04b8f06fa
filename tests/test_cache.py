"""The KV cache: positions, the causal mask, crop and keep (compaction)."""
import pytest
import torch

from specdec.cache import KVCache


def filled(n: int) -> KVCache:
    """A 1-layer cache whose slot i holds the value i (keys) and -i (values)."""
    c = KVCache(1, 1, 2, 16, torch.float32)
    pos = torch.arange(100, 100 + n)
    c.reserve(pos)
    vals = torch.arange(n, dtype=torch.float32)[None, :, None].expand(1, n, 2)
    c.write(0, vals, -vals)
    c.commit(n)
    return c


def test_next_positions_continue_the_last_cached_position():
    c = KVCache(1, 1, 2, 16, torch.float32)
    assert c.next_positions(3).tolist() == [0, 1, 2]
    c = filled(4)
    assert c.next_positions(2).tolist() == [104, 105]


def test_causal_mask_sees_cache_and_earlier_new_tokens():
    c = filled(2)
    assert c.causal_mask(3).int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_crop_forgets_the_tail_and_refuses_growth():
    c = filled(6)
    c.crop(4)
    assert c.length == 4 and c.next_positions(1).tolist() == [104]
    with pytest.raises(ValueError, match="crop"):
        c.crop(5)


def test_keep_moves_chosen_slots_after_start():
    c = filled(8)
    c.keep(3, torch.tensor([4, 6, 7]))
    assert c.length == 6
    assert c.k[0, 0, :6, 0].tolist() == [0, 1, 2, 4, 6, 7]
    assert c.v[0, 0, :6, 0].tolist() == [0, -1, -2, -4, -6, -7]
    assert c.positions[:6].tolist() == [100, 101, 102, 104, 106, 107]
    c.keep(4, torch.zeros(0, dtype=torch.long))  # nothing kept past 4: a crop
    assert c.length == 4
    with pytest.raises(ValueError, match="slots must lie in"):
        c.keep(2, torch.tensor([1]))
    with pytest.raises(ValueError, match="outside the cache"):
        c.keep(5, torch.tensor([5]))
