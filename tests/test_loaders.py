"""The in-memory batch loader behaves like DataLoader + (Distributed)Sampler."""

import pytest
import torch
from torch.utils.data import DistributedSampler

from vae_lightning.data.loaders import ShardedPermutation, TensorBatchLoader


def epoch_images(loader: TensorBatchLoader, epoch: int) -> torch.Tensor:
    loader.sampler.set_epoch(epoch)
    return torch.cat([images for images, _ in loader])


def make_loader(size=103, batch_size=10, shuffle=True, seed=0, **shard):
    images = torch.arange(size)
    labels = images % 10
    sampler = ShardedPermutation(size, shuffle=shuffle, seed=seed, **shard)
    return TensorBatchLoader(images, labels, batch_size, sampler)


def test_each_epoch_is_a_permutation_with_new_order():
    loader = make_loader()
    first, second = epoch_images(loader, 0), epoch_images(loader, 1)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(103))
    assert not torch.equal(first, second)
    assert len(loader) == 11 and len(list(loader)[-1][0]) == 3


def test_same_seed_same_order_other_seed_other_order():
    assert torch.equal(epoch_images(make_loader(seed=3), 2), epoch_images(make_loader(seed=3), 2))
    assert not torch.equal(
        epoch_images(make_loader(seed=3), 2), epoch_images(make_loader(seed=4), 2)
    )


def test_labels_follow_images():
    for images, labels in make_loader():
        assert torch.equal(labels, images % 10)


def test_unshuffled_is_in_order():
    assert epoch_images(make_loader(shuffle=False), 5).tolist() == list(range(103))


def test_two_ranks_get_disjoint_covering_shards_of_equal_length():
    shards = [make_loader(num_replicas=2, rank=r) for r in (0, 1)]
    parts = [epoch_images(s, 4) for s in shards]
    assert len(parts[0]) == len(parts[1]) == 52  # padded like DistributedSampler
    assert set(parts[0].tolist()) | set(parts[1].tolist()) == set(range(103))
    # Only the single padding index repeats.
    assert len(set(parts[0].tolist()) & set(parts[1].tolist())) == 1


def test_unpadded_shards_see_every_index_exactly_once():
    parts = [
        epoch_images(make_loader(shuffle=False, num_replicas=2, rank=r, pad=False), 0)
        for r in (0, 1)
    ]
    assert sorted(torch.cat(parts).tolist()) == list(range(103))


def test_block_shards_deal_whole_batches_of_the_single_process_order():
    """Evaluation under DDP: rank r evaluates batches r, r + N, ... of one process's order."""
    single = [images.tolist() for images, _ in make_loader(shuffle=False)]
    shards = [
        make_loader(shuffle=False, num_replicas=2, rank=r, pad=False, block=10) for r in (0, 1)
    ]
    batches = [[images.tolist() for images, _ in shard] for shard in shards]
    assert batches[0] == single[0::2] and batches[1] == single[1::2]  # the last batch holds 3
    assert [len(shard.sampler) for shard in shards] == [53, 50]
    assert [len(shard) for shard in shards] == [6, 5]


def test_block_shards_need_no_padding():
    with pytest.raises(ValueError, match="block=10"):
        ShardedPermutation(103, shuffle=True, num_replicas=2, rank=0, pad=True, block=10)


def test_state_dict_resumes_mid_epoch_with_the_same_permutation():
    """What Lightning's fit loop saves in a checkpoint and loads on a mid-epoch resume."""
    loader = make_loader()
    loader.sampler.set_epoch(3)
    full_epoch = [images for images, _ in loader]
    batches = iter(loader)
    for _ in range(4):
        next(batches)
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches_yielded": 4, "batches_per_epoch": 11}

    resumed = make_loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(3)  # as Lightning does before the first batch
    rest = [images for images, _ in resumed]
    assert len(rest) == len(full_epoch) - 4
    assert all(torch.equal(a, b) for a, b in zip(rest, full_epoch[4:], strict=True))
    # Only that pass is shortened; the next epoch is whole again.
    assert len(list(resumed)) == len(full_epoch)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize(("size", "replicas"), [(103, 2), (100, 4), (7, 3)])
def test_shards_are_exactly_distributed_samplers(size, replicas, shuffle):
    """Same permutation, padding and striding as torch's DistributedSampler, every epoch."""
    for rank in range(replicas):
        ours = ShardedPermutation(size, shuffle=shuffle, seed=5, num_replicas=replicas, rank=rank)
        theirs = DistributedSampler(
            range(size), num_replicas=replicas, rank=rank, shuffle=shuffle, seed=5
        )
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert ours.indices().tolist() == list(theirs)
            assert len(ours) == len(theirs)


def test_two_ranks_stay_disjoint_every_epoch_and_change_order():
    ranks = [make_loader(size=100, num_replicas=2, rank=r) for r in (0, 1)]
    previous = None
    for epoch in range(3):
        parts = [epoch_images(loader, epoch) for loader in ranks]
        assert not set(parts[0].tolist()) & set(parts[1].tolist())  # 100 divides evenly
        assert sorted(torch.cat(parts).tolist()) == list(range(100))
        assert previous is None or not torch.equal(parts[0], previous)
        previous = parts[0]
