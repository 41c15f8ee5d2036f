"""NeMo Curator's `SemanticDeduplicationWorkflow` arguments that have no counterpart here: each is
accepted where its value changes nothing imagesieve promises, and refused with what to do instead
where it would (so a Curator script runs, and never silently means something else)."""

from __future__ import annotations

from typing import Any

# accepted whatever the value: settings of Curator's GPU k-means or output layout that do not change
# which images are duplicates here (k-means only splits the work; every pair within a part is exact)
NO_EFFECT = {
    "tol": "k-means tolerance", "init": "k-means initialisation", "n_init": "k-means restarts",
    "oversampling_factor": "k-means|| oversampling", "max_samples_per_batch": "k-means batch size",
    "_duplicates_num_row_groups_hint": "Parquet row groups of the duplicates list",
    "clear_output": "Curator deletes output_path first; imagesieve never deletes, it overwrites its own files",
    "embedding_dim": "read from the embeddings",
    "input_file_extensions": "Parquet files are found by their .parquet name",
}
# accepted at the value that means what imagesieve does; anything else refused with the reason
ONLY = {
    "input_filetype": ("parquet", "embeddings are read from Parquet (or clip-retrieval .npy); convert JSONL "
                                  "to Parquet first"),
    "distance_metric": ("cosine", "eps is a cosine distance here; on unit vectors l2 orders pairs as cosine "
                                  "does, so pass distance_metric='cosine' with the matching eps"),
    "ranking_strategy": (None, "use which_to_keep ('hard', 'easy', 'random', 'first', 'resolution', "
                               "'file-size' or 'column:NAME')"),
}


def check_curator_options(options: dict[str, Any]) -> None:
    """Refuse unknown keyword arguments and Curator values that cannot mean the same here."""
    for name, value in options.items():
        if name in NO_EFFECT:
            continue
        if name not in ONLY:
            known = ", ".join(sorted([*NO_EFFECT, *ONLY]))
            raise TypeError(f"SemanticDeduplicationWorkflow got an unknown argument {name!r}; besides its own it "
                            f"accepts NeMo Curator's {known}")
        wanted, why = ONLY[name]
        if value != wanted:
            raise ValueError(f"SemanticDeduplicationWorkflow: {name}={value!r} is not supported: {why}")


def check_io_kwargs(name: str, kwargs: dict | None) -> None:
    """Curator's read/write/cache kwargs: only `storage_options`, which local paths do not need."""
    unknown = sorted(set(kwargs or {}) - {"storage_options"})
    if unknown:
        raise ValueError(f"SemanticDeduplicationWorkflow: {name} keys {unknown} are not used here (Parquet is read "
                         "and written with pyarrow); only storage_options is accepted")
