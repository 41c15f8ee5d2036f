"""Small pieces any layer may use, each knowing nothing of tasks or stages: Arrow string buffers for
compiled loops (`arrow_strings`), the cache folder (`cache_dir`), child processes that die with their
driver (`lifeline`)."""
