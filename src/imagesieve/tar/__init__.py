"""WebDataset tar shards: their headers, their members grouped into samples, and shards written again.

One chain reads every shard (`read.ShardReader`): its members listed (`headers`, compiled; or `listing`,
Python's tarfile read strictly: small work, extended headers, and gz/bz2/xz known by `compression`), each
name checked (`names`) -> samples by key (`grouping_kernel`, compiled; `grouping`, one by one) -> a
`table.ShardTable`. Writing copies kept members' byte ranges from a mapping of the shard (`mapped`) into a
temporary file renamed when complete (`write`). Keys are hashed (`key_hash`, xxh64) for the ID index to
look them up. Nothing here is imported by this `__init__`: the compiled modules load numba, which small
runs never pay for.
"""
