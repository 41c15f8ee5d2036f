"""WebDataset tar shards: their headers, their members grouped into samples, and shards written again."""
