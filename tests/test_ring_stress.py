"""BatchPrefetcher under random timings: every batch holds its own frames from the moment it is handed out until
the consumer asks for the next one, whatever the producer and the consumer do meanwhile (random delays on both
sides, slots 2..4, batches of 1..5, streams with a short tail)."""

import random
import time

import numpy as np
import torch

from tracker.io.pipeline import BatchPrefetcher


def _frames(n: int, rng: random.Random, delay: float):
    for i in range(n):
        if rng.random() < delay:
            time.sleep(rng.random() * 0.0005)
        yield np.full((4, 5, 3), i % 251, np.uint8)


def _stream(seed: int) -> list[str]:
    """Problems seen on one random stream (empty: none)."""
    rng, consumer = random.Random(seed), random.Random(-seed)
    b, slots, n = rng.choice([1, 2, 3, 5]), rng.choice([2, 3, 4]), rng.randrange(1, 60)
    prefetched = BatchPrefetcher(_frames(n, rng, rng.random()), b, slots=slots)
    problems, seen = [], 0
    for batch in prefetched:
        want = torch.tensor([(seen + k) % 251 for k in range(len(batch))], dtype=torch.uint8)
        first = batch[:, 0, 0, 0].clone()
        if consumer.random() < 0.5:  # the consumer holds the batch a while: the producer runs ahead meanwhile
            time.sleep(consumer.random() * 0.001)
        last = batch[:, 0, 0, 0].clone()
        whole = bool((batch == last[:, None, None, None]).all())  # every pixel of each frame: its own index
        if not (torch.equal(first, want) and torch.equal(last, want) and whole):
            problems.append(f"seed {seed} (batch {b}, slots {slots}): frames {seen}.. {first.tolist()} {last.tolist()}")
        seen += len(batch)
    prefetched.close()
    if seen != n:
        problems.append(f"seed {seed}: {seen} of {n} frames")
    return problems


def test_no_batch_is_written_while_the_consumer_holds_it_under_random_timings():
    problems, start, streams = [], time.perf_counter(), 0
    while time.perf_counter() - start < 2.0 or streams < 10:
        problems += _stream(streams)
        streams += 1
    assert not problems, problems[:3]
