"""The streamed corpus hashes `verify` and `compare` use equal the in-memory ones, batch and row-group
boundaries included; a file the loader would re-order is not streamed."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from kit.corpus import table
from kit.results.compare import corpus_facts
from kit.train.data import check_trainable, load_corpus, usable
from kit.train.synthetic import synthetic_corpus


def test_streamed_hashes_equal_the_loaded_ones(tmp_path, monkeypatch):
    df = synthetic_corpus(n_sources=4, frames=9, encoders=("libx264", "libx265"), cqs=(22, 30))
    df.loc[3, "vmaf"] = float("nan")  # an untrainable row: the JSONL hash of the trainable rows leaves it out
    ordered = table.canonical_order(df)
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.Table.from_pandas(ordered, preserve_index=False), path, row_group_size=50)  # several groups
    monkeypatch.setattr(table, "STREAM_BATCH_ROWS", 7)  # batches that straddle cells and row groups
    loaded = load_corpus(path)
    assert table.streamed_corpus_sha256(path) == table.corpus_sha256(loaded)
    trainable = check_trainable(loaded)
    assert table.streamed_jsonl_sha256(path, usable) == (table.jsonl_sha256(trainable), len(trainable))
    facts = corpus_facts(tmp_path)
    assert facts.rows == len(df) and len(facts.sources) == 4 and len(facts.cells) == 4 * 2 * 2
    shuffled = tmp_path / "shuffled" / "corpus.parquet"
    shuffled.parent.mkdir()
    ordered.sample(frac=1, random_state=0).to_parquet(shuffled, index=False)
    assert table.streamed_corpus_sha256(shuffled) is None  # the caller hashes the loaded frame instead
