"""The kernel's account of a task's memory, as the processing log reports it."""

from __future__ import annotations

from export_tx import memory

MB = 1024 * 1024


def test_peak_rss_counts_what_the_process_touched() -> None:
    memory.release()
    assert memory.reset_peak()  # the mark starts at today's RSS, whatever ran in this process before
    before = memory.peak_rss()
    assert before is not None and before > 10 * MB  # an interpreter with pyarrow is never smaller
    block = bytearray(64 * MB)  # zero-filled: every page is touched
    after = memory.peak_rss()
    assert after is not None and after >= before + 60 * MB and len(block) == 64 * MB


def test_reset_peak_starts_a_new_high_water_mark() -> None:
    block = bytearray(128 * MB)
    high = memory.peak_rss()
    del block
    memory.release()
    assert memory.reset_peak()
    low = memory.peak_rss()
    assert high is not None and low is not None and low <= high - 64 * MB  # the block's pages were returned
    small = bytearray(16 * MB)
    later = memory.peak_rss()
    assert later is not None and low + 12 * MB <= later < high and len(small) == 16 * MB


def test_release_gives_arrow_pool_pages_back() -> None:
    import pyarrow as pa

    pool = pa.default_memory_pool()
    table = pa.table({"x": pa.array(range(8_000_000), pa.int64())})  # 64 MB from Arrow's pool
    assert pool.bytes_allocated() >= 60 * MB
    del table
    memory.release()
    assert pool.bytes_allocated() < 60 * MB
