"""The tags family's declaration: queue ``tags``, batched ``tasks.extract_tags``."""

from __future__ import annotations

from tasks.tags.options import ExtractTagsRequest
from worker.family import BatchSpec, FamilySpec, ModelSpec, TaskSpec

FAMILY = FamilySpec(
    name="tags",
    queue="tags",
    tasks=(
        TaskSpec(
            name="tasks.extract_tags",
            handler="tasks.tags.task:ExtractTags",
            request=ExtractTagsRequest,
            chain_input="tasks.tags.options:from_previous",
            time_limit_s=lambda s: s.tags_time_limit_s,
            batch=BatchSpec(
                size=lambda s: s.tags_batch_size,
                flush_interval_s=lambda s: s.tags_flush_interval_s,
            ),
        ),
    ),
    models=(ModelSpec("embedder", "tasks.tags.models:load_embedder"),),
    lightweight="unigram candidates only, at most 128 per document, from the first 10,000 "
    "characters of the text (normal: the requested n-grams, 512 candidates, the whole text)",
    client={
        "extract_tags": "tasks.tags.client:extract_tags",
        "map_tags": "tasks.tags.client:map_tags",
    },
    cli="tasks.tags.cli:install",
    demo="tasks.tags.cli:demo",
)
